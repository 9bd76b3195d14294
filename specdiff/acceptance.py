"""Acceptance rules for speculative decoding. Pure functions, no model calls.

Shapes: ``num_drafts`` (K) candidate drafts of ``gamma`` tokens each, all continuing
the same committed prefix.

- ``greedy_accept``: the longest draft prefix equal to the verifier's argmax, then the
  verifier's own argmax token. Lossless for greedy decoding whatever candidate is chosen.
- ``rejection_accept``: speculative sampling (Leviathan et al. 2023, Alg. 1; Chen et al.
  2023, Alg. 2) generalised to K drafts by recursive rejection sampling (SpecInfer,
  Miao et al. 2024, "multi-step speculative sampling"). With K = 1 it is exactly the
  single-draft rule. Exact when the candidates' tokens at each depth are i.i.d. draws
  from the recorded ``draft_probs`` given the shared prefix (drafts sampled with
  replacement, not deduplicated), which is how every specdiff drafter samples them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Acceptance:
    candidate: int  # which draft row the accepted tokens come from
    num_accepted: int  # draft tokens accepted from that row, 0..gamma
    next_token: int  # the verifier's own token after them (correction or bonus)


def greedy_accept(draft_tokens: Tensor, target_logits: Tensor, lengths: Tensor | None = None) -> Acceptance:
    """draft_tokens [K, gamma]; target_logits [K, gamma + 1, vocab] (row k scores draft k);
    lengths [K] (optional): row k holds only its first lengths[k] tokens (ragged rows)."""
    gamma = draft_tokens.shape[1]
    target_tokens = target_logits.argmax(-1)  # [K, gamma + 1]
    matches = (draft_tokens == target_tokens[:, :gamma]).long()
    if lengths is not None:
        matches = matches * (torch.arange(gamma)[None] < lengths[:, None])
    accepted_lengths = matches.cumprod(-1).sum(-1)  # [K]
    candidate = int(accepted_lengths.argmax())
    num_accepted = int(accepted_lengths[candidate])
    return Acceptance(candidate, num_accepted, int(target_tokens[candidate, num_accepted]))


def residual_distribution(target_probs: Tensor, draft_probs: Tensor) -> Tensor:
    """norm(max(p - q, 0)) over the last dim: where to sample after a rejection."""
    residual = (target_probs - draft_probs).clamp_min(0)
    mass = residual.sum(-1, keepdim=True)
    # p == q leaves no residual mass; a rejection is then impossible in exact arithmetic,
    # so falling back to p only absorbs rounding.
    return torch.where(mass > 0, residual / mass.clamp_min(1e-30), target_probs)


def rejection_accept(
    draft_tokens: Tensor,
    draft_probs: Tensor,
    target_probs: Tensor,
    generator: torch.Generator | None,
    lengths: Tensor | None = None,
) -> Acceptance:
    """Multi-draft recursive rejection sampling.

    draft_tokens [K, gamma]; draft_probs [K, gamma, vocab] (the distributions the draft
    tokens were drawn from); target_probs [K, gamma + 1, vocab] (the verifier's, after its
    own temperature / top-k / top-p; row k conditioned on draft k's prefix).

    At depth j, the candidates that share the accepted prefix are tried in turn: token x
    of candidate c is accepted with probability min(1, p(x) / q_c(x)); otherwise
    p <- norm(max(p - q_c, 0)) and the next candidate is tried. If all are rejected the
    next token is sampled from the residual p. If all gamma are accepted, a bonus token
    is sampled from the verifier's distribution after the draft.

    lengths [K] (optional): row k holds only its first lengths[k] tokens. A row that ends is
    no longer tried; when every row sharing the accepted prefix has ended, the bonus token
    is sampled there. Exact when a row's length depends only on what is known before its
    tokens are drawn (the committed tokens, the distributions, its own tokens to the left),
    never on another row's sampled tokens.
    """
    num_drafts, gamma = draft_tokens.shape
    row_lengths = [gamma] * num_drafts if lengths is None else lengths.tolist()
    alive = list(range(num_drafts))
    for depth in range(gamma):
        target = target_probs[alive[0], depth]
        continuing = [c for c in alive if row_lengths[c] > depth]
        if not continuing:  # every row on the accepted prefix ends here: a bonus token
            return Acceptance(alive[0], depth, int(torch.multinomial(target, 1, generator=generator)))
        accepted_token = None
        for candidate in continuing:
            token = int(draft_tokens[candidate, depth])
            draft = draft_probs[candidate, depth]
            ratio = target[token] / draft[token].clamp_min(1e-30)
            if torch.rand((), generator=generator) < ratio:
                accepted_token = token
                break
            target = residual_distribution(target, draft)
        if accepted_token is None:
            next_token = int(torch.multinomial(target, 1, generator=generator))
            return Acceptance(alive[0], depth, next_token)
        alive = [c for c in continuing if int(draft_tokens[c, depth]) == accepted_token]
    bonus = int(torch.multinomial(target_probs[alive[0], gamma], 1, generator=generator))
    return Acceptance(alive[0], gamma, bonus)
