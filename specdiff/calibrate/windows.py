"""Training windows: mask blocks at many offsets of one sequence.

Causal-prefix drafters (``make_windows``): a window starting at index ``start`` of a
sequence ``ids`` is the draft block ``[ids[start], MASK x (gamma - 1)]`` at positions
start..start+gamma-1, whose row j must predict ``ids[start + 1 + j]``. It sees the prefix
ids[:start] (keys and values from the base model, computed once per sequence and shared by
all windows) and itself: row 0 causally, rows 1.. the whole block. Windows never see each other.

Bidirectional drafters (``make_full_windows``, Dream-architecture): the prefix sees the block,
so each window is a sequence of its own, ``ids[:start + 1] + MASK x gamma`` (the layout they
draft with), every row seeing every row; row start + j must predict ``ids[start + 1 + j]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from specdiff.drafters.standalone.drafter import block_visibility


@dataclass(frozen=True)
class WindowBatch:
    block_ids: Tensor  # [W, gamma]
    positions: Tensor  # [W, gamma]
    attn_mask: Tensor  # [W, gamma, seq_len + gamma] bool
    targets: Tensor  # [W, gamma]
    valid: Tensor  # [W, gamma] float
    rows: Tensor | None = None  # [W, gamma]: the rows predicting the slots (None: rows 0..gamma-1)


def make_windows(ids: Tensor, starts: Tensor, gamma: int, mask_token_id: int) -> WindowBatch:
    """ids [seq_len]; starts [W] with 0 <= start <= seq_len - 2."""
    seq_len = ids.shape[0]
    offsets = torch.arange(gamma)
    block_ids = torch.full((len(starts), gamma), mask_token_id, dtype=torch.long)
    block_ids[:, 0] = ids[starts]
    positions = starts[:, None] + offsets
    target_index = starts[:, None] + 1 + offsets
    valid = target_index < seq_len
    targets = torch.where(valid, ids[target_index.clamp(max=seq_len - 1)], 0)
    prefix_visible = torch.arange(seq_len)[None, None, :] < starts[:, None, None]  # [W, 1, seq_len]
    attn_mask = torch.cat([prefix_visible.expand(-1, gamma, -1), block_visibility(gamma).expand(len(starts), -1, -1)],
                          dim=-1)
    return WindowBatch(block_ids, positions, attn_mask, targets, valid.float())


def make_full_windows(ids: Tensor, starts: Tensor, gamma: int, mask_token_id: int) -> WindowBatch:
    """ids [seq_len]; starts [W] with 0 <= start <= seq_len - 2. Windows are padded (with
    MASK, unseen) to one length; ``attn_mask`` [W, length, length]."""
    seq_len = ids.shape[0]
    length = int(starts.max()) + 1 + gamma
    offsets = torch.arange(gamma)
    columns = torch.arange(length)[None]  # [1, length]
    ends = starts[:, None] + 1  # [W, 1]: committed tokens of each window
    block_ids = torch.where(columns < ends, ids[columns.clamp(max=seq_len - 1)], mask_token_id)
    visible = columns < ends + gamma  # [W, length]: a window's own rows
    attn_mask = visible[:, None, :].expand(-1, length, -1)
    target_index = starts[:, None] + 1 + offsets
    valid = target_index < seq_len
    targets = torch.where(valid, ids[target_index.clamp(max=seq_len - 1)], 0)
    return WindowBatch(block_ids, columns.expand(len(starts), -1), attn_mask, targets, valid.float(),
                       rows=starts[:, None] + offsets)


def make_anchor_blocks(ids: Tensor, anchors: Tensor, gamma: int, mask_token_id: int) -> WindowBatch:
    """DFlash-layout training blocks. ids [seq_len]; anchors [W] with 0 <= anchor <= seq_len - 2.

    Block w is [ids[anchor], MASK x gamma] at positions anchor..anchor+gamma; its row j >= 1
    must predict ids[anchor + j] (``targets`` [W, gamma] are rows 1..gamma). It sees the
    verifier's features of positions strictly before its anchor and the whole block
    (``attn_mask`` [W, 1 + gamma, seq_len + 1 + gamma]); blocks never see each other."""
    seq_len = ids.shape[0]
    block_ids = torch.full((len(anchors), 1 + gamma), mask_token_id, dtype=torch.long)
    block_ids[:, 0] = ids[anchors]
    positions = anchors[:, None] + torch.arange(1 + gamma)
    target_index = positions[:, 1:]
    valid = target_index < seq_len
    targets = torch.where(valid, ids[target_index.clamp(max=seq_len - 1)], 0)
    context_visible = torch.arange(seq_len)[None, None, :] < anchors[:, None, None]  # [W, 1, seq_len]
    attn_mask = torch.cat([context_visible.expand(-1, 1 + gamma, -1),
                           torch.ones(len(anchors), 1 + gamma, 1 + gamma, dtype=torch.bool)], dim=-1)
    return WindowBatch(block_ids, positions, attn_mask, targets, valid.float())
