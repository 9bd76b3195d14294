"""The masked-diffusion drafter: a whole block of gamma tokens from one denoising pass.

The drafter caches every committed token but the last (draft blocks never enter the
cache, so it only grows as ``update`` reports committed tokens). A pass runs the not-yet-cached
committed tokens causally (their keys and values join the cache) followed by the draft
block ``[last token, MASK x (gamma - 1)]``. Logits are shifted: block row 0 (the last
committed token) predicts slot 0, block row j (a MASK standing at slot j - 1's position)
predicts slot j. Block row 0 sees only the prefix and itself, so an untrained drafter cut
from a causal LM starts with that LM's next-token prediction in slot 0; the other rows
see the prefix and the whole block. Adapters, if any, act on block rows only.

With ``steps > 1`` slots are committed LEFT TO RIGHT in ``steps`` contiguous chunks:
chunk s is sampled from a pass in which chunks < s are filled in and later slots are
still masked, so slot j's distribution depends only on the prefix and on draft tokens to
its left, which keeps rejection sampling exact. (Orders that reveal later slots first
would make ``draft_probs[j]`` depend on tokens to its right and bias the output; they are
not offered.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from specdiff.drafters.base import Accepted, Draft
from specdiff.drafters.diffusion_network import DiffusionLM, KVCache
from specdiff.sampling import (
    SamplingConfig,
    choose_tokens,
    drafts_from_marginals,
    make_first_candidate_greedy,
    slot_confidence,
)


def chunk_bounds(gamma: int, steps: int) -> list[tuple[int, int]]:
    """Split slots 0..gamma-1 into ``steps`` contiguous, near-equal, left-to-right chunks."""
    if not 1 <= steps <= gamma:
        raise ValueError(f"steps must be in 1..gamma ({gamma}), got {steps}")
    edges = [round(index * gamma / steps) for index in range(steps + 1)]
    return list(zip(edges[:-1], edges[1:]))


def block_visibility(block: int) -> Tensor:
    """[block, block] bool: what each row of a draft block sees of the block. Row 0 (the
    last committed token) sees itself only, as in a causal pass; rows 1.. (MASK slots) see
    the whole block. Training windows and drafting use this one definition."""
    visible = torch.ones(block, block, dtype=torch.bool)
    visible[0, 1:] = False
    return visible


def block_attention_mask(num_past: int, num_causal: int, block: int) -> Tensor:
    """[1, num_causal + block, num_past + num_causal + block] bool (True = attend).

    The ``num_causal`` new prefix rows attend causally; block rows attend to everything
    before the block and to the block as ``block_visibility`` says."""
    rows = num_causal + block
    mask = torch.ones(rows, num_past + rows, dtype=torch.bool)
    mask[:num_causal, num_past:] = torch.ones(num_causal, rows, dtype=torch.bool).tril()
    mask[num_causal:, num_past + num_causal:] = block_visibility(block)
    return mask[None]


class DiffusionDrafter:
    """Drafts with a ``DiffusionLM``; keeps the KV cache of the committed prefix only."""

    feature_layers: tuple[int, ...] = ()

    def __init__(self, network: DiffusionLM, steps: int = 1):
        if steps < 1:
            raise ValueError(f"steps (denoising passes) must be >= 1, got {steps}")
        self.network = network.eval()
        self.steps = steps
        self.vocab_size = network.config.vocab_size
        self.start([])

    def start(self, prompt: list[int], features: Tensor | None = None) -> None:
        self._tokens = list(prompt)  # committed
        self._cache: KVCache = []  # keys and values of self._tokens[:self._num_cached]
        self._num_cached = 0

    def update(self, accepted: Accepted) -> None:
        self._tokens.extend(accepted.tokens)

    def _block_pass(self, causal_tokens: list[int], block_ids: Tensor) -> Tensor:
        """One pass over [causal_tokens | block]; the causal tokens join the cache.

        block_ids [K, gamma]. Returns hidden states [K, gamma, hidden]; row j predicts slot j."""
        num_past, num_causal = self._num_cached, len(causal_tokens)
        batch, gamma = block_ids.shape
        causal_ids = torch.tensor([causal_tokens], dtype=torch.long).expand(batch, -1)
        input_ids = torch.cat([causal_ids, block_ids], dim=1)
        positions = torch.arange(num_past, num_past + num_causal + gamma)[None].expand(batch, -1)
        mask = block_attention_mask(num_past, num_causal, gamma)
        hidden, new_kv = self.network(input_ids, positions, mask, self._cache or None, adapted_from=num_causal)
        if num_causal:
            fresh = [(k[:1, :, :num_causal], v[:1, :, :num_causal]) for k, v in new_kv]
            self._cache = fresh if not self._cache else [
                (torch.cat([k0, k1], 2), torch.cat([v0, v1], 2)) for (k0, v0), (k1, v1) in zip(self._cache, fresh)
            ]
            self._num_cached += num_causal
        return hidden[:, num_causal:]

    def _slot_logits(self, hidden: Tensor) -> Tensor:
        logits = self.network.lm_head(hidden).float()
        missing = self.vocab_size - logits.shape[-1]
        if missing:  # a reduced draft vocabulary (the first N ids): the rest get probability 0
            logits = F.pad(logits, (0, missing), value=float("-inf"))
        return logits

    @torch.inference_mode()
    def draft(
        self,
        gamma: int,
        sampling: SamplingConfig,
        num_drafts: int = 1,
        generator: torch.Generator | None = None,
        greedy_first: bool = False,
    ) -> Draft:
        tokens = self._tokens
        causal_tokens = tokens[self._num_cached:-1]
        block = torch.full((1, gamma), self.network.config.mask_token_id, dtype=torch.long)
        block[0, 0] = tokens[-1]
        bounds = chunk_bounds(gamma, min(self.steps, gamma))

        first_end = bounds[0][1]
        hidden = self._block_pass(causal_tokens, block)  # [1, gamma, hidden]
        first_logits = self._slot_logits(hidden[0, :first_end])  # [chunk, vocab], shared by all K drafts
        chunk_tokens, chunk_probs = drafts_from_marginals(first_logits, sampling, generator, num_drafts, greedy_first)
        if len(bounds) == 1:  # one pass: every draft shares the marginals
            return Draft(tokens=chunk_tokens, draft_probs=chunk_probs, confidence=slot_confidence(first_logits))

        draft_tokens = torch.zeros(num_drafts, gamma, dtype=torch.long)
        draft_probs = torch.zeros(num_drafts, gamma, self.vocab_size)
        draft_tokens[:, :first_end] = chunk_tokens
        draft_probs[:, :first_end] = chunk_probs
        blocks = block.expand(num_drafts, -1).clone()
        for start, end in bounds[1:]:
            blocks[:, 1:start + 1] = draft_tokens[:, :start]  # slot i's token sits in block row i + 1
            hidden = self._block_pass([], blocks)  # [K, gamma, hidden]
            logits = self._slot_logits(hidden[:, start:end])  # [K, chunk, vocab]
            chunk_tokens, chunk_probs = choose_tokens(logits, sampling, generator, 1)
            chunk_tokens = chunk_tokens[..., 0]
            if greedy_first:
                chunk_tokens, chunk_probs = make_first_candidate_greedy(chunk_tokens, chunk_probs, logits[0])
            draft_tokens[:, start:end] = chunk_tokens
            draft_probs[:, start:end] = chunk_probs
        return Draft(tokens=draft_tokens, draft_probs=draft_probs)
