"""fp32 linear layers for verification-sized inputs (1-64 rows), with the kernel chosen per
row count by measuring this machine.

Why this exists: a speculative verification pass feeds 1 + gamma rows (or a trie of them)
through every linear layer, and the linear layers are ~90% of a pass. The kernel
``F.linear`` picks for a handful of rows runs far below what the CPU allows, and which
alternative is fastest depends on the machine: on a 2-core AMD EPYC (AVX2) ``(W @ x.T).T``
was about 2x faster at 2-16 rows, on a 2-core Xeon with AVX-512 oneDNN's inner-product
kernel on the unchanged fp32 weight was 1.3-1.5x faster at 2-33 rows while the transposed
product was slower (docs/results/2026-11-30-verification-cost-xeon.md), and the winner changes with the row count
and the weight's shape. So the choice is measured once per machine and weight shape
(:func:`machine_kernel_plan`, about 10 s per shape, cached in specdiff's cache folder;
:func:`plan_kernels` does it for every shape of a model at load) and stored as a
:class:`KernelPlan`.

Every kernel computes the same fp32 product from the same weight (no copy, no packing, no
lower precision): only the float summation order, and so the last bits, can differ. When
autograd needs a gradient the ordinary kernel is used.

Modules are swapped (the way peft and bitsandbytes install their layers), sharing the
original parameters, so tied embeddings stay tied and nothing is copied.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specdiff.machine_cache import cache_root, cpu_name, read_entries, store_entry

KERNEL_MODES = ("measured", "plain")  # SPECDIFF_KERNELS
ROW_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 17, 24, 32, 48, 64)  # a call with r rows uses the plan of the smallest bucket >= r


def _linear(x2d: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return F.linear(x2d, weight, bias)


def _transposed(x2d: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    out = torch.matmul(weight, x2d.T).T.contiguous()  # [rows, out_features]
    return out + bias if bias is not None else out


def _onednn(x2d: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x2d, weight, bias, "none", [], "")


KERNELS: dict[str, Callable[[Tensor, Tensor, Tensor | None], Tensor]] = {
    "linear": _linear, "transposed": _transposed, "onednn": _onednn}


@dataclass(frozen=True)
class KernelPlan:
    """The kernel used for each entry of ``ROW_BUCKETS``; more rows always use ``linear``."""

    by_bucket: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.by_bucket) != len(ROW_BUCKETS) or not set(self.by_bucket) <= KERNELS.keys():
            raise ValueError(f"a kernel plan names one of {sorted(KERNELS)} for each of {ROW_BUCKETS} rows")

    def kernel_for(self, rows: int) -> str:
        for bucket, kernel in zip(ROW_BUCKETS, self.by_bucket):
            if rows <= bucket:
                return kernel
        return "linear"

    def describe(self) -> str:
        return ", ".join(f"{rows}: {kernel}" for rows, kernel in zip(ROW_BUCKETS, self.by_bucket))


PLAIN = KernelPlan(("linear",) * len(ROW_BUCKETS))  # what transformers does


def fast_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, plan: KernelPlan | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` for x [..., in_features], by ``plan``'s kernel for the
    number of rows (the machine's plan when None)."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if rows == 0 or x.device.type != "cpu" or weight.dtype != torch.float32 or needs_grad:
        return F.linear(x, weight, bias)
    kernel = (plan or machine_kernel_plan(*weight.shape)).kernel_for(rows)
    if kernel == "linear":
        return F.linear(x, weight, bias)
    # contiguous in and out: the kernel a library picks (and so the rounding) depends on the layout
    out = KERNELS[kernel](x.reshape(rows, x.shape[-1]).contiguous(), weight, bias)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def int8_is_fast() -> bool:
    """Whether PyTorch has an x86 int8 engine here (fbgemm / oneDNN): then int8 drafter
    weights measured about 2x cheaper per draft call at the same acceptance (docs/kernels.md)."""
    return torch.backends.quantized.engine in ("x86", "fbgemm", "onednn")


def quantize_int8(weight: Tensor, bias: Tensor | None = None):
    """The weight as symmetric per-output-row int8, packed with the bias for
    :func:`int8_linear` (PyTorch's own dynamic-quantization linear: fbgemm or oneDNN)."""
    weight = weight.detach().float()
    scales = (weight.abs().amax(dim=1).clamp(min=1e-12) / 127).double()
    with warnings.catch_warnings():  # torch marks quantized tensors deprecated; its int8 linear is still the fastest here
        warnings.simplefilter("ignore", UserWarning)
        qweight = torch.quantize_per_channel(weight, scales, torch.zeros(len(scales), dtype=torch.long), 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())


def int8_linear(x: Tensor, packed) -> Tensor:
    """x [..., in] times a :func:`quantize_int8` weight: activations are quantized per call
    (dynamic quantization, as ``torch.ao.nn.quantized.dynamic.Linear`` does), weights are read
    as int8, a quarter of the fp32 bytes; measured 3-6x faster than fp32 at 1-17 rows."""
    rows = x.numel() // x.shape[-1]
    x2d = x.reshape(rows, x.shape[-1]).float().contiguous()
    out = torch.ops.quantized.linear_dynamic(x2d, packed, not _has_vnni())
    return out.reshape(*x.shape[:-1], out.shape[-1]).to(x.dtype)


@functools.cache
def _has_vnni() -> bool:
    """Whether the CPU multiplies int8 with 32-bit accumulation (VNNI). Without it, 8-bit
    activations can saturate fbgemm's 16-bit intermediate sums, so they are quantized to 7
    bits (``reduce_range``, as ``torch.ao.nn.quantized.dynamic.Linear`` always does)."""
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


class FastLinear(nn.Linear):
    """nn.Linear computed with :func:`fast_linear`; ``plan`` None is the machine's plan for its
    shape. With ``int8`` set (:func:`quantize_linears`) it computes with int8 weights instead:
    for drafters only, whose numerics never touch losslessness."""

    plan: KernelPlan | None = None
    int8: object | None = None  # packed int8 weight and bias (quantize_int8)

    def forward(self, x: Tensor) -> Tensor:
        if self.int8 is not None and not (torch.is_grad_enabled() and x.requires_grad):  # int8 has no gradient
            return int8_linear(x, self.int8)
        return fast_linear(x, self.weight, self.bias, self.plan)


def quantize_linears(model: nn.Module) -> int:
    """Give every linear layer of ``model`` int8 weights (per-row scales; plain ``nn.Linear``
    layers are swapped for :class:`FastLinear` first); the fp32 weights stay for training and
    saving. Returns how many layers were quantized."""
    use_fast_linear(model)
    layers = [m for m in model.modules() if isinstance(m, FastLinear)]
    for layer in layers:
        layer.int8 = quantize_int8(layer.weight, layer.bias)
    return len(layers)


def use_fast_linear(model: nn.Module) -> nn.Module:
    """Swap every plain ``nn.Linear`` in ``model`` (or ``model`` itself, if it is one) for a
    :class:`FastLinear` sharing its parameters. Adapter factors (peft's ``lora_A``/``lora_B``:
    rank-r products, too small to gain) stay as they are. Returns the swapped model (changed
    in place, except when ``model`` itself is swapped)."""
    if type(model) is nn.Linear:
        return _as_fast(model)
    for parent_name, parent in list(model.named_modules()):
        if parent_name.rpartition(".")[2] in ADAPTER_FACTORS:
            continue
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                parent._modules[name] = _as_fast(child)
    return model


ADAPTER_FACTORS = ("lora_A", "lora_B")


@contextmanager
def kernel_plan(model: nn.Module, plan: KernelPlan | None) -> Iterator[None]:
    """Run ``model``'s :class:`FastLinear` layers with ``plan`` inside the block (``PLAIN``:
    exactly transformers' kernels), restoring their plans after."""
    layers = [m for m in model.modules() if isinstance(m, FastLinear)]
    before = [layer.plan for layer in layers]
    for layer in layers:
        layer.plan = plan
    try:
        yield
    finally:
        for layer, old in zip(layers, before):
            layer.plan = old


def first_rows(linear: nn.Linear, rows: int) -> FastLinear:
    """A :class:`FastLinear` computing only the first ``rows`` outputs of ``linear``, sharing
    its weight (a view, no copy)."""
    if not 1 <= rows <= linear.out_features:
        raise ValueError(f"cannot keep {rows} of {linear.out_features} output rows")
    kept = nn.Linear(linear.in_features, rows, bias=linear.bias is not None, device="meta")
    kept.weight = nn.Parameter(linear.weight.detach()[:rows], requires_grad=False)
    if linear.bias is not None:
        kept.bias = nn.Parameter(linear.bias.detach()[:rows], requires_grad=False)
    return _as_fast(kept)


def _as_fast(linear: nn.Linear) -> FastLinear:
    swapped = FastLinear.__new__(FastLinear)
    nn.Module.__init__(swapped)
    swapped.in_features, swapped.out_features = linear.in_features, linear.out_features
    swapped.register_parameter("weight", linear.weight)
    swapped.register_parameter("bias", linear.bias)
    return swapped


def available_kernels() -> list[str]:
    kernels = ["linear", "transposed"]
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        kernels.append("onednn")
    return kernels


def time_kernels(weights: list[Tensor], rows: int, kernels: list[str], repeats: int = 3) -> dict[str, float]:
    """Median seconds of one product of ``rows`` rows per weight, each kernel going once over
    every weight per repeat (interleaved, so drift hits all alike). Weights larger in all
    than the CPU's last-level cache make this a measurement of memory-speed kernels."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, weights[0].shape[1], generator=generator)
    times: dict[str, list[float]] = {k: [] for k in kernels}
    with torch.inference_mode():
        for repeat in range(repeats + 1):  # the first round warms up
            for kernel in kernels:
                started = time.perf_counter()
                for weight in weights:
                    KERNELS[kernel](x, weight, None)
                if repeat:
                    times[kernel].append((time.perf_counter() - started) / len(weights))
    return {k: statistics.median(t) for k, t in times.items()}


def measure_kernel_plan(weights: list[Tensor], repeats: int = 3) -> tuple[KernelPlan, dict[int, dict[str, float]]]:
    """The fastest kernel per row bucket over ``weights`` [out, in] (fp32), and the timings.
    ``linear`` keeps a bucket unless another kernel is at least 5% faster (noise is not a reason to
    round differently from transformers)."""
    kernels = available_kernels()
    timings = {rows: time_kernels(weights, rows, kernels, repeats) for rows in ROW_BUCKETS}
    chosen = []
    for rows in ROW_BUCKETS:
        best = min(timings[rows], key=timings[rows].get)
        chosen.append(best if timings[rows][best] < 0.95 * timings[rows]["linear"] else "linear")
    return KernelPlan(tuple(chosen)), timings


PLAN_BYTES = 1 << 29  # 512 MiB of distinct weights: beyond a last-level cache, as a real pass is
PLAN_MAX_WEIGHTS = 64  # for small shapes: enough calls to time, few enough to be quick


@functools.cache
def machine_kernel_plan(out_features: int, in_features: int) -> KernelPlan:
    """This machine's plan for [out_features, in_features] fp32 weights: read from
    ``kernel_plans.json`` in specdiff's cache folder, else measured (about 10 s, once) and
    stored there. ``SPECDIFF_KERNELS=plain`` uses transformers' kernels everywhere."""
    if kernel_mode() == "plain":
        return PLAIN

    path = cache_root() / "kernel_plans.json"
    key = f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {out_features}x{in_features}"
    try:
        return KernelPlan(tuple(read_entries(path)[key]))
    except (KeyError, TypeError, ValueError):
        pass
    size = out_features * in_features
    count = min(PLAN_MAX_WEIGHTS, max(1, PLAN_BYTES // (4 * size)))
    values = torch.randn(count * size, generator=torch.Generator().manual_seed(0))
    weights = [values[i * size:(i + 1) * size].view(out_features, in_features) for i in range(count)]
    plan, _ = measure_kernel_plan(weights)
    store_entry(path, key, list(plan.by_bucket))
    return plan


def plan_kernels(model: nn.Module) -> dict[tuple[int, int], KernelPlan]:
    """The machine's plan for every weight shape of ``model``'s :class:`FastLinear` layers,
    measured now where not cached, so that no measurement falls inside a timed pass."""
    shapes = {tuple(m.weight.shape) for m in model.modules() if isinstance(m, FastLinear)}
    return {shape: machine_kernel_plan(*shape) for shape in sorted(shapes)}


def kernel_mode() -> str:
    """``SPECDIFF_KERNELS``: unset or "measured" (this machine's measured plans) or "plain"
    (transformers' kernels everywhere); any other value is refused."""
    mode = os.environ.get("SPECDIFF_KERNELS", "").strip().lower() or "measured"
    if mode not in KERNEL_MODES:
        raise ValueError(f"SPECDIFF_KERNELS={os.environ['SPECDIFF_KERNELS']!r} is not one of "
                         f"{', '.join(KERNEL_MODES)}: unset it or set one of those")
    return mode
