"""Linear layers that run verification-sized inputs (2-64 rows) faster on CPUs.

Why this exists: a speculative verification pass feeds 1 + gamma rows through every
linear layer. MKL's GEMM for a handful of rows runs far below memory bandwidth, so on our
2-core CPU a 17-row pass of the 1.5B costs ~2.8x a 1-row pass (MEASUREMENTS.md). Computing
``(W @ x.T).T`` instead of ``x @ W.T`` picks a faster kernel for 2-64 rows (measured here:
16 rows through the 8960x1536 MLP weight 8.7 -> 6.2 ms, through the 151936x1536 head
179 -> 118 ms) and is mathematically the same product; only the float summation order, and
so the last bits, can differ. One row and long prefills keep the ordinary kernel, so plain
decoding is bit-for-bit unchanged.

Modules are swapped (the way peft and bitsandbytes install their layers), sharing the
original parameters, so tied embeddings stay tied and nothing is copied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SMALL_BATCH_ROWS = range(2, 65)


def small_batch_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` for x [..., in_features]; the transposed product when
    x holds 2-64 rows in all. Autograd works through either path."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if rows not in SMALL_BATCH_ROWS or x.device.type != "cpu":
        return F.linear(x, weight, bias)
    # contiguous in and out: the kernel MKL picks (and so the rounding) depends on the layout
    out = torch.matmul(weight, x.reshape(rows, x.shape[-1]).contiguous().T).T.contiguous()  # [rows, out_features]
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


class SmallBatchLinear(nn.Linear):
    """nn.Linear computed with :func:`small_batch_linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return small_batch_linear(x, self.weight, self.bias)


def use_small_batch_linear(model: nn.Module) -> nn.Module:
    """Swap every plain ``nn.Linear`` in ``model`` for a :class:`SmallBatchLinear` sharing its
    parameters. Returns ``model`` (changed in place)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                parent._modules[name] = _as_small_batch(child)
    return model


def _as_small_batch(linear: nn.Linear) -> SmallBatchLinear:
    swapped = SmallBatchLinear.__new__(SmallBatchLinear)
    nn.Module.__init__(swapped)
    swapped.in_features, swapped.out_features = linear.in_features, linear.out_features
    swapped.register_parameter("weight", linear.weight)
    swapped.register_parameter("bias", linear.bias)
    return swapped
