"""Logits to probabilities, and sampling with an explicit random generator.

Pure functions: tensors in, tensors out. ``temperature == 0`` means greedy and is
its own exact path (argmax), never a tiny temperature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingConfig:
    """How a distribution over the vocabulary is formed from logits.

    temperature: 0 for greedy, otherwise > 0.
    top_k: keep the k most likely tokens (0 = all).
    top_p: keep the smallest set whose mass reaches top_p (1.0 = all), in (0, 1].
    """

    temperature: float = field(default=0.0, metadata={"help": "verifier temperature, 0 = greedy"})
    top_k: int = field(default=0, metadata={"help": "keep the k most likely tokens (0 = all)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus mass (1.0 = all)"})

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = no limit), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def logits_to_probs(logits: Tensor, sampling: SamplingConfig) -> Tensor:
    """Softmax of ``logits / temperature`` restricted to top-k and top-p.

    logits: [..., vocab]. Returns float32 probabilities of the same shape. In greedy
    mode the result is the one-hot distribution of the argmax.
    """
    logits = logits.float()
    if sampling.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    # Shift the maximum to 0 before dividing: a tiny temperature then sends every other
    # logit to -inf (the greedy limit) instead of overflowing to inf - inf = nan.
    logits = (logits - logits.amax(-1, keepdim=True)) / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        drop_sorted = mass_before >= sampling.top_p  # the top token always survives
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(probs: Tensor, generator: torch.Generator | None, num_samples: int = 1) -> Tensor:
    """Draw token ids from ``probs`` [..., vocab]. Returns [..., num_samples] int64."""
    flat = probs.reshape(-1, probs.shape[-1])
    draws = torch.multinomial(flat, num_samples, replacement=True, generator=generator)
    return draws.reshape(*probs.shape[:-1], num_samples)


def choose_tokens(
    logits: Tensor, sampling: SamplingConfig, generator: torch.Generator | None, num_samples: int = 1
) -> tuple[Tensor, Tensor]:
    """Pick tokens from ``logits`` [..., vocab]: argmax when greedy, else a sample.

    Returns (tokens [..., num_samples], probs [..., vocab]) where ``probs`` is exactly
    the distribution the tokens were drawn from.
    """
    probs = logits_to_probs(logits, sampling)
    if sampling.greedy:
        tokens = logits.argmax(-1, keepdim=True).expand(*logits.shape[:-1], num_samples)
        return tokens, probs
    return sample(probs, generator, num_samples), probs


def make_first_candidate_greedy(tokens: Tensor, probs: Tensor, first_logits: Tensor) -> tuple[Tensor, Tensor]:
    """Replace candidate 0 of sampled drafts by the argmax of its logits.

    tokens: [K, ...] int64 and probs: [K, ..., vocab], the candidates' tokens and the
    distributions they were drawn from; first_logits: [..., vocab], candidate 0's logits.
    Returns new tensors in which candidate 0 is the argmax and its distribution the
    argmax's one-hot, so ``probs`` still says what every token was drawn from. The K rows
    are then no longer identically distributed: only greedy verification, whose
    acceptance ignores how drafts were drawn, may use such candidates.
    """
    greedy_tokens, greedy_probs = choose_tokens(first_logits, SamplingConfig(), None)
    tokens = torch.cat([greedy_tokens[..., 0][None], tokens[1:]])
    probs = torch.cat([greedy_probs[None], probs[1:]])
    return tokens, probs


def drafts_from_marginals(
    logits: Tensor, sampling: SamplingConfig, generator: torch.Generator | None, num_drafts: int,
    greedy_first: bool = False,
) -> tuple[Tensor, Tensor]:
    """K drafts from one pass's per-slot logits [gamma, vocab]: every row drawn from the
    same marginals (argmax when greedy). Returns tokens [K, gamma] and the distributions
    they were drawn from [K, gamma, vocab]; ``greedy_first`` makes row 0 the argmax."""
    tokens, probs = choose_tokens(logits, sampling, generator, num_drafts)  # [gamma, K], [gamma, vocab]
    tokens, probs = tokens.T.contiguous(), probs[None].expand(num_drafts, -1, -1)
    if greedy_first:
        tokens, probs = make_first_candidate_greedy(tokens, probs, logits)
    return tokens, probs


def slot_confidence(logits: Tensor) -> Tensor:
    """[..., vocab] logits -> [...]: the largest probability at temperature 1. It describes
    the distribution, not a token drawn from it, so policies may read it without biasing
    rejection sampling."""
    return torch.softmax(logits.float(), dim=-1).amax(-1)
