"""Compare a method's output with the reference greedy output, honestly.

A one-token and a multi-token forward pass round differently, so at a near-tie the
verifier's argmax can flip. A divergence is reported with its position and the
verifier's top-2 logit margin there; only a margin within float noise is a tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdiff.verifier import Verifier

# fp32 logits of a ~1B model computed with different GEMM shapes differ by ~1e-4..1e-3. A
# verifier backend with coarser rounding says its own bound (``tie_margin``).
TIE_MARGIN = 1e-2


@dataclass(frozen=True)
class Divergence:
    position: int  # index into the new tokens where the outputs first differ
    reference_token: int
    other_token: int
    top2_margin: float  # verifier's logit(top1) - logit(top2) at that position
    tie_margin: float = TIE_MARGIN  # the largest margin the verifier's rounding can flip

    @property
    def is_tie(self) -> bool:
        return self.top2_margin <= self.tie_margin


def first_divergence(reference: list[int], other: list[int]) -> int | None:
    """First index where the token lists differ (a length difference counts), else None."""
    for index, (first, second) in enumerate(zip(reference, other)):
        if first != second:
            return index
    return None if len(reference) == len(other) else min(len(reference), len(other))


@torch.inference_mode()
def explain_divergence(verifier, prompt_ids: torch.Tensor, reference: list[int], other: list[int]) -> Divergence | None:
    """None if equal; else where they differ and the verifier's top-2 margin there, from a
    one-token pass after the reference's prefix. ``verifier``: any verifier backend, or a
    transformers model."""
    position = first_divergence(reference, other)
    if position is None:
        return None
    if not hasattr(verifier, "score"):
        verifier = Verifier(verifier)
    context = torch.cat([prompt_ids, torch.tensor([reference[:position]], dtype=torch.long)], dim=1)
    verifier.prefill(context)
    logits = verifier.score(context[:, -1:]).logits[0, 0].float()
    verifier.truncate(verifier.cached_length - 1)
    top2 = torch.topk(logits, 2).values
    pick = lambda tokens: tokens[position] if position < len(tokens) else -1
    return Divergence(position, pick(reference), pick(other), float(top2[0] - top2[1]),
                      getattr(verifier, "tie_margin", TIE_MARGIN))
