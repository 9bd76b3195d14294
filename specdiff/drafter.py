"""What every drafter returns and promises, and what it is told after each step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from specdiff.sampling import SamplingConfig


@dataclass(frozen=True)
class Draft:
    """Candidate rows after the committed sequence. Rows may be ragged (a tree of drafts from
    several sources): ``lengths[k]`` tokens of row k count, the rest is padding. ``draft_probs``
    may be None when every row is deterministic (its tokens follow from the committed ones
    alone), which only greedy verification may use; ``sources`` names where each row came
    from; ``plan`` is what a tree policy chose and why (JSON-ready), for records."""

    tokens: Tensor  # [num_drafts, gamma] int64
    draft_probs: Tensor | None  # [num_drafts, gamma, vocab]: the distributions the tokens were drawn from
    lengths: Tensor | None = None  # [num_drafts] int64; None: every row holds gamma tokens
    sources: tuple[str, ...] | None = None  # [num_drafts]
    plan: dict | None = None
    confidence: Tensor | None = None  # [gamma]: the largest probability of each slot's distribution (temperature 1);
    # a signal for tree policies only, never used for acceptance


@dataclass(frozen=True)
class Accepted:
    """What one verification step committed, as the drafter is told it.

    ``tokens`` extend the sequence: the accepted draft tokens of ``candidate``, then the
    verifier's own token. ``features`` ([num_accepted + 1, feature_size], or None when the
    drafter reads none) are the verifier's hidden states of the tokens it cached in that
    step: the previous last token and the accepted drafts. Features therefore always
    cover every committed token but the last."""

    tokens: list[int]
    candidate: int
    num_accepted: int
    features: Tensor | None = None
    verify_seconds: float | None = None  # what the verification pass of this step cost


class Drafter(Protocol):
    """Proposes ``gamma`` tokens after the committed sequence.

    Step contract: ``start`` gives the prompt (and the verifier's hidden states of all of
    it but the last token, if ``feature_layers`` asks for them); each ``draft`` proposes a
    block after the committed tokens; ``update`` tells what the verifier committed. Caches
    are kept and cut back by position, from what ``update`` says.

    Contract for losslessness: ``draft_probs[k, j]`` is exactly the distribution that
    ``tokens[k, j]`` was sampled from, and it may depend only on the committed tokens and
    on ``tokens[k, :j]`` (draft tokens to its left). The K rows are sampled independently
    (with replacement), except that ``greedy_first=True`` makes row 0 the argmax draft
    (each slot the argmax given row 0's tokens to its left; ``draft_probs[0]`` one-hot):
    callers ask for that only under greedy verification.
    """

    vocab_size: int
    feature_layers: tuple[int, ...]  # verifier layers whose hidden states it reads; () for none

    def start(self, prompt: list[int], features: Tensor | None = None) -> None:
        """A new sequence: ``prompt`` is committed; ``features`` [len(prompt) - 1, F]."""

    def draft(
        self,
        gamma: int,
        sampling: SamplingConfig,
        num_drafts: int = 1,
        generator: torch.Generator | None = None,
        greedy_first: bool = False,
    ) -> Draft: ...

    def update(self, accepted: Accepted) -> None:
        """The verifier committed ``accepted.tokens`` after the sequence so far."""
