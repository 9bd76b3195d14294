"""What every drafter returns and promises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from specdiff.sampling import SamplingConfig


@dataclass(frozen=True)
class Draft:
    tokens: Tensor  # [num_drafts, gamma] int64
    draft_probs: Tensor  # [num_drafts, gamma, vocab]: the distributions the tokens were drawn from


class Drafter(Protocol):
    """Proposes ``gamma`` tokens after ``prefix``.

    Contract for losslessness: ``draft_probs[k, j]`` is exactly the distribution that
    ``tokens[k, j]`` was sampled from, and it may depend only on the prefix and on
    ``tokens[k, :j]`` (draft tokens to its left). The K rows are sampled independently
    (with replacement), except that ``greedy_first=True`` makes row 0 the argmax draft
    (each slot the argmax given row 0's tokens to its left; ``draft_probs[0]`` one-hot):
    callers ask for that only under greedy verification. Drafters keep their own caches
    and reconcile them with the prefix they are given, so the caller never has to tell
    them what was accepted.
    """

    vocab_size: int

    def draft(
        self,
        prefix: Tensor,  # [1, length] int64, the committed tokens
        gamma: int,
        sampling: SamplingConfig,
        num_drafts: int = 1,
        generator: torch.Generator | None = None,
        greedy_first: bool = False,
    ) -> Draft: ...

    def reset(self) -> None:
        """Forget all cached state (a new prompt follows)."""


def common_prefix_length(cached: list[int], prefix: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    limit = min(len(cached), len(prefix))
    for index in range(limit):
        if cached[index] != prefix[index]:
            return index
    return limit
