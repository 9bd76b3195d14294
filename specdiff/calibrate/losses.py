"""Drafter training losses over the gamma slots of each window. Pure functions.

``log_q`` [windows, gamma]: log of the drafter's probability of the target token at
each slot (one denoising pass, all slots masked); ``valid`` [windows, gamma]: 1 where the
slot has a target (windows near the end of a sequence are shorter).
"""

from __future__ import annotations

import torch
from torch import Tensor

LOSSES = ("ce", "ce_decay", "ce_streak", "streak")
CE_DECAY_SCALE = 7.0  # DFlash's position decay exp(-(k - 1) / 7)


def _streak_prefix_products(log_q: Tensor, valid: Tensor) -> Tensor:
    """prod_{i<=j} q_i [windows, gamma], zero past a window's end."""
    return torch.exp(torch.cumsum(log_q * valid, dim=-1)) * valid


def streak_loss(log_q: Tensor, valid: Tensor) -> Tensor:
    """Streak distillation (SpecDiff-2): - mean_windows sum_j prod_{i<=j} q_i, minus the
    expected length of the accepted streak."""
    return -_streak_prefix_products(log_q, valid).sum(-1).mean()


def ce_streak_loss(log_q: Tensor, valid: Tensor) -> Tensor:
    """Cross-entropy variant: - sum_j stopgrad(prod_{i<j} q_i) log q_j, mean over windows."""
    reach = torch.exp(torch.cumsum(log_q * valid, dim=-1) - log_q * valid).detach()
    return -(reach * log_q * valid).sum(-1).mean()


def ce_loss(log_q: Tensor, valid: Tensor) -> Tensor:
    """Plain cross-entropy on every slot (the "AR distillation" baseline)."""
    return -(log_q * valid).sum() / valid.sum().clamp_min(1)


def ce_decay_loss(log_q: Tensor, valid: Tensor) -> Tensor:
    """DFlash's cross-entropy with slot k (1-based) weighted by exp(-(k - 1) / 7),
    normalised by the total weight of the valid slots."""
    weights = torch.exp(-torch.arange(log_q.shape[-1], dtype=log_q.dtype) / CE_DECAY_SCALE) * valid
    return -(weights * log_q).sum() / weights.sum().clamp_min(1e-9)


def window_loss(name: str, log_q: Tensor, valid: Tensor) -> Tensor:
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {name!r}")
    losses = {"ce": ce_loss, "ce_decay": ce_decay_loss, "ce_streak": ce_streak_loss, "streak": streak_loss}
    return losses[name](log_q, valid)


def expected_streak(log_q: Tensor, valid: Tensor) -> Tensor:
    """Mean expected accepted length per window (for progress reporting)."""
    return _streak_prefix_products(log_q, valid).sum(-1).mean()
