"""The decoding loop: draft, verify, accept, commit. Streaming and collected decoding,
speculative and plain autoregressive, all share ``stream_generate``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from specdiff.acceptance import greedy_accept, rejection_accept
from specdiff.drafter import Accepted, Draft, Drafter
from specdiff.prompting import truncate_at_eos
from specdiff.sampling import SamplingConfig, logits_to_probs
from specdiff.verifier import Verifier


@dataclass(frozen=True)
class DecodingConfig:
    """gamma: draft length; num_drafts: K candidate drafts per step; sampling: the
    verifier's (the output distribution); draft_sampling: the drafter's (defaults to
    the verifier's); argmax_candidate: under greedy verification with K > 1, candidate 0
    is the drafter's argmax draft and the other K - 1 are sampled from draft_sampling, so
    self-selection never drafts worse than K = 1 (greedy acceptance does not depend on
    how candidates were drawn). Ignored when the verifier samples: rejection sampling
    over K drafts is exact only for i.i.d. drafts.

    gamma defaults to 2, the fastest setting measured on 2-core CPUs, where a verification pass
    grows steeply past a few tokens and the shipped drafter's acceptance falls after slot 2
    (docs/results/2026-11-30-verification-cost-xeon.md). GPUs verify 17 tokens at about the
    cost of one: use 16 there."""

    gamma: int = field(default=2, metadata={
        "help": "draft length (2: fastest measured on a 2-core CPU; on GPUs, where a 17-token verification pass "
                "costs about as much as a 1-token one, try the paper's 16)"})
    num_drafts: int = field(default=1, metadata={"help": "K drafts per step (self-selection)"})
    max_new_tokens: int = 128
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    draft_sampling: SamplingConfig | None = None
    seed: int = 0
    argmax_candidate: bool = field(default=True, metadata={
        "help": "greedy decoding with K > 1: candidate 0 is the drafter's argmax draft"})

    def __post_init__(self) -> None:
        if self.gamma < 1:
            raise ValueError(f"gamma (draft length) must be >= 1, got {self.gamma}")
        if self.num_drafts < 1:
            raise ValueError(f"num_drafts must be >= 1, got {self.num_drafts}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"--seed must be in 0..2**63-1, got {self.seed}")

    @property
    def drafting(self) -> SamplingConfig:
        return self.draft_sampling or self.sampling

    @property
    def greedy_first_draft(self) -> bool:
        """Whether the drafter should make candidate 0 its argmax draft."""
        return self.argmax_candidate and self.sampling.greedy and self.num_drafts > 1 and not self.drafting.greedy


@dataclass(frozen=True)
class StepRecord:
    drafted: int  # draft tokens proposed per candidate (the longest row; 0 for a plain verifier step)
    accepted: int  # draft tokens accepted
    candidate: int  # which of the K candidates they came from
    new_tokens: list[int]  # tokens committed this step (accepted + the verifier's own)
    draft_seconds: float
    verify_seconds: float
    nodes: int = 1  # tokens in the verification pass (the trie's nodes, the root included)
    source: str = ""  # where the chosen candidate came from ("" for a plain step)
    plan: dict | None = None  # a tree policy's choice and estimates, when the drafter has one


@dataclass
class GenerationResult:
    prompt_length: int
    tokens: list[int]  # the new tokens
    steps: list[StepRecord]
    seconds: float
    stop_reason: str  # "eos" or "length"

    @property
    def verifier_calls(self) -> int:
        return len(self.steps)

    @property
    def tau(self) -> float:
        """Mean tokens committed per verifier call, the verifier's own token included."""
        return len(self.tokens) / max(1, len(self.steps))

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else float("inf")


def check_block(gamma: int, max_gamma: int | None) -> None:
    """Refuse a draft length beyond a drafter's fixed block of ``max_gamma`` slots (None: no limit)."""
    if max_gamma is not None and gamma > max_gamma:
        raise ValueError(f"gamma {gamma} is beyond the drafter's block of {max_gamma} draft slots: "
                         f"pass --gamma {max_gamma} or less")


def check_context(prompt_length: int, config: DecodingConfig, max_length: int | None) -> None:
    """Refuse a generation that cannot fit the verifier's context (``max_length`` None: unbounded)."""
    if max_length and prompt_length + config.max_new_tokens + config.gamma > max_length:
        raise ValueError(
            f"prompt ({prompt_length} tokens) + max_new_tokens ({config.max_new_tokens}) + gamma "
            f"({config.gamma}) exceeds the verifier's context of {max_length} tokens: "
            "shorten the prompt or lower --max-new-tokens or --gamma"
        )

def check_inputs(prompt_ids: Tensor, verifier: Verifier, drafter: Drafter | None, config: DecodingConfig) -> None:
    if not hasattr(verifier, "score") or (drafter is not None and not hasattr(drafter, "draft")):
        raise ValueError("arguments go (prompt_ids, verifier, drafter, config): pass the verifier before the drafter")
    if prompt_ids.ndim != 2 or prompt_ids.shape[0] != 1:
        raise ValueError(f"prompt_ids must have shape [1, length] (batch size 1), got {tuple(prompt_ids.shape)}")
    if prompt_ids.shape[1] == 0:
        raise ValueError("the prompt is empty: give at least one token")
    outside = prompt_ids[(prompt_ids < 0) | (prompt_ids >= verifier.vocab_size)]
    if len(outside):
        raise ValueError(
            f"the prompt holds token id {int(outside[0])}, outside the verifier's vocabulary of {verifier.vocab_size}: "
            "the tokenizer does not belong to this model (load both from the same folder)"
        )
    check_context(prompt_ids.shape[1], config, verifier.max_length)
    check_block(config.gamma, getattr(drafter, "max_gamma", None))  # drafters with a fixed block (DFlash)
    if drafter is not None and drafter.vocab_size != verifier.vocab_size:
        raise ValueError(
            f"the drafter's vocabulary ({drafter.vocab_size}) differs from the verifier's "
            f"({verifier.vocab_size}): the drafter must share the verifier's tokenizer"
        )


def stream_generate(
    prompt_ids: Tensor,
    verifier: Verifier,
    drafter: Drafter | None,
    config: DecodingConfig,
    eos_token_ids: set[int] | frozenset[int] = frozenset(),
) -> Iterator[StepRecord]:
    """Yield one StepRecord per verifier call. ``drafter=None`` decodes plainly (one token
    per call) through the same loop. Stops exactly at an EOS token or max_new_tokens."""
    check_inputs(prompt_ids, verifier, drafter, config)
    generator = torch.Generator().manual_seed(config.seed)
    feature_layers = drafter.feature_layers if drafter is not None else ()
    prompt_features = verifier.prefill(prompt_ids, feature_layers)
    if drafter is not None:
        drafter.start(prompt_ids[0].tolist(), prompt_features)
    last_token = int(prompt_ids[0, -1])
    produced = 0
    while produced < config.max_new_tokens:
        started = time.perf_counter()
        room = config.max_new_tokens - produced - 1  # never draft past max_new_tokens: the verifier adds one
        gamma = 0 if drafter is None else min(config.gamma, room)
        draft = Draft(torch.zeros(1, 0, dtype=torch.long), None)
        if gamma > 0:
            draft = cut_draft(drafter.draft(gamma, config.drafting, config.num_drafts, generator,
                                            greedy_first=config.greedy_first_draft), room)
        draft_tokens, lengths = draft.tokens, draft.lengths
        drafted = time.perf_counter()

        roots = torch.full((draft_tokens.shape[0], 1), last_token, dtype=torch.long)
        candidates = torch.cat([roots, draft_tokens], dim=1)
        scored = verifier.score(candidates, feature_layers, lengths)  # logits [K, 1 + gamma, vocab]
        acceptance = accept(draft, scored.logits, config.sampling, verifier.vocab_size, generator)
        committed = verifier.commit(scored, acceptance.candidate, acceptance.num_accepted)
        verified = time.perf_counter()

        new_tokens = draft_tokens[acceptance.candidate, : acceptance.num_accepted].tolist() + [acceptance.next_token]
        new_tokens = new_tokens[: config.max_new_tokens - produced]
        new_tokens, ended = truncate_at_eos(new_tokens, eos_token_ids)
        produced += len(new_tokens)
        last_token = new_tokens[-1]
        source = draft.sources[acceptance.candidate] if draft.sources else "drafter"
        source = source if acceptance.num_accepted else ""
        yield StepRecord(draft_tokens.shape[1], acceptance.num_accepted, acceptance.candidate, new_tokens,
                         drafted - started, verified - drafted, len(scored.trie.tokens), source, draft.plan)
        if ended:
            return
        if drafter is not None and produced < config.max_new_tokens:
            drafter.update(Accepted(new_tokens, acceptance.candidate, acceptance.num_accepted, committed.features,
                                    verify_seconds=verified - drafted))


def accept(draft: Draft, logits: Tensor, sampling: SamplingConfig, vocab_size: int, generator: torch.Generator):
    """Which row and how many of its tokens the verifier's ``logits`` accept: greedy, or
    rejection sampling against the drafter's recorded distributions (a row without them is
    deterministic: drawn from a one-hot distribution)."""
    if sampling.greedy:
        return greedy_accept(draft.tokens, logits, draft.lengths)
    draft_probs = draft.draft_probs
    if draft_probs is None:
        draft_probs = torch.nn.functional.one_hot(draft.tokens, vocab_size).float()
    return rejection_accept(draft.tokens, draft_probs, logits_to_probs(logits, sampling), generator, draft.lengths)


def cut_draft(draft: Draft, room: int) -> Draft:
    """The draft with no row longer than ``room`` tokens (the verifier adds one of its own,
    and never past max_new_tokens)."""
    if draft.tokens.shape[1] <= room:
        return draft
    probs = draft.draft_probs[:, :room] if draft.draft_probs is not None else None
    lengths = draft.lengths.clamp_max(room) if draft.lengths is not None else None
    return dataclasses.replace(draft, tokens=draft.tokens[:, :room], draft_probs=probs, lengths=lengths)


def generate(
    prompt_ids: Tensor,
    verifier: Verifier,
    drafter: Drafter | None,
    config: DecodingConfig,
    eos_token_ids: set[int] | frozenset[int] = frozenset(),
) -> GenerationResult:
    """Collect ``stream_generate``: speculative with a drafter, plain with ``drafter=None``."""
    started = time.perf_counter()
    steps = list(stream_generate(prompt_ids, verifier, drafter, config, eos_token_ids))
    tokens = [token for step in steps for token in step.new_tokens]
    stop = "eos" if tokens and tokens[-1] in eos_token_ids else "length"
    return GenerationResult(prompt_ids.shape[1], tokens, steps, time.perf_counter() - started, stop)


def speculative_generate(prompt_ids, verifier, drafter, config, eos_token_ids=frozenset()) -> GenerationResult:
    """Speculative decoding: the verifier's own output, faster. Arguments in the order every
    call here takes them: (prompt, verifier, drafter, ...)."""
    return generate(prompt_ids, verifier, drafter, config, eos_token_ids)


def autoregressive_generate(prompt_ids, verifier, config, eos_token_ids=frozenset()) -> GenerationResult:
    """Plain decoding through the same verifier and loop: the reference output."""
    return generate(prompt_ids, verifier, None, config, eos_token_ids)
