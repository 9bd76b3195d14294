"""`specdiff bench-verify-cost`: what one verification pass costs on this machine, against
what the hardware allows.

For 1, 2, 4, ... scored tokens the verifier runs one pass over a cached prefix, as a chain
(K = 1) and as a K = 4 trie with the same number of nodes, once with transformers' own
linear kernels (``transformers``), once with specdiff 0.1's fixed transposed product
(``transposed``, the "before") and once with the kernel plan specdiff picked for this
machine (``specdiff``); every configuration runs once per round, so drift hits all alike.
The roofline of a pass is max(bytes of weights read / read bandwidth, FLOPs / GEMM rate),
both rates measured here: a pass must read every linear weight once (the input embedding
is only indexed) and do 2 FLOPs per weight per token plus attention over the cache.
``torch.profiler`` splits one pass per size into matrix products, attention and the rest.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from specdiff.linear_kernels import PLAIN, ROW_BUCKETS, KernelPlan, kernel_plan, plan_kernels
from specdiff.models.loading import load_causal_lm
from specdiff.verifier import Verifier

CATEGORIES = {
    "matrix products": ("mm", "linear", "matmul", "addmm", "bmm"),
    "attention": ("scaled_dot_product", "softmax", "flash_attention"),
}


def read_bandwidth(gib: float = 1.0) -> float:
    """Bytes per second of the faster of two reads of ``gib`` GiB of fp32: a sum, and a
    one-row matrix product (what a one-token pass does with each weight)."""
    values = torch.ones(int(gib * (1 << 28)))
    matrix = values.view(-1, 4096)
    row = torch.ones(1, matrix.shape[0])
    best = {}
    for name, read in (("sum", values.sum), ("matvec", lambda: row @ matrix)):
        times = []
        for _ in range(4):
            started = time.perf_counter()
            read()
            times.append(time.perf_counter() - started)
        best[name] = values.numel() * 4 / min(times[1:])
    return max(best.values())


def gemm_rate(size: int = 2048) -> float:
    """fp32 FLOP per second of one size^3 matrix product (median of 5)."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    times = []
    for _ in range(6):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times[1:])


def linear_weights(model: nn.Module) -> int:
    """Parameters a pass reads through linear layers (a tied head counted once)."""
    return sum(p.numel() for p in {id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Linear)}.values())


def trie_candidates(root: int, num_nodes: int, num_drafts: int, vocab: int,
                    generator: torch.Generator) -> torch.Tensor | None:
    """[num_drafts, 1 + gamma] rows whose trie has exactly ``num_nodes`` nodes (None when
    fewer than 1 + num_drafts): the rows branch at the root and share nothing else, except
    that where the count is not a multiple of num_drafts, rows 1, 2, ... share row 0's first
    draft token (each such row saves one node)."""
    if num_nodes < 1 + num_drafts:
        return None
    gamma = -(-(num_nodes - 1) // num_drafts)
    rows = torch.full((num_drafts, 1 + gamma), root)
    for depth in range(1, 1 + gamma):  # distinct tokens across the rows at every depth
        rows[:, depth] = torch.randperm(vocab, generator=generator)[:num_drafts]
    excess = 1 + num_drafts * gamma - num_nodes  # < num_drafts
    rows[1:1 + excess, 1] = rows[0, 1]
    return rows


def profile_split(verifier, candidates: torch.Tensor, past: int) -> dict[str, float]:
    """Fractions of one pass's CPU time by kind of operation."""

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        verifier.score(candidates)
    verifier.truncate(past)
    totals = dict.fromkeys([*CATEGORIES, "rest"], 0.0)
    for event in prof.key_averages():
        kind = next((k for k, keys in CATEGORIES.items() if any(key in event.key for key in keys)), "rest")
        totals[kind] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {k: v / whole for k, v in totals.items()}


def pass_shapes(root: int, token_counts: list[int], num_drafts: int, vocab: int, generator) -> dict:
    """{(shape, tokens): candidates}: a chain of each size, and a K-row trie of it where one exists."""
    shapes = {}
    for n in token_counts:
        chain = torch.randint(0, vocab, (1, n), generator=generator)
        chain[0, 0] = root
        shapes[("chain", n)] = chain
        trie = trie_candidates(root, n, num_drafts, vocab, generator)
        if trie is not None:
            shapes[(f"trie K={num_drafts}", n)] = trie
    return shapes


def measure_verify_cost(verifier_spec: str, token_counts: list[int], repeats: int, prefill: int,
                        num_drafts: int = 4) -> dict:
    """Median pass times per (kernels, shape, tokens), the machine's rates, the roofline and
    the profile split; see the module docstring."""

    model, _ = load_causal_lm(verifier_spec)
    # specdiff 0.1's fixed choice, kept as the "before" of this table: (W @ x.T).T for 2-64 rows
    transposed = KernelPlan(("linear",) + ("transposed",) * (len(ROW_BUCKETS) - 1))
    started = time.perf_counter()
    plans = plan_kernels(model)  # already measured at load unless the cache was cleared since
    planning_s = time.perf_counter() - started
    bandwidth, flop_rate = read_bandwidth(), gemm_rate()
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (1, prefill + 1), generator=generator)
    verifier = Verifier(model)
    verifier.prefill(prompt)
    past, root = verifier.cached_length, int(prompt[0, -1])
    shapes = pass_shapes(root, token_counts, num_drafts, vocab, generator)
    kernels = {"transformers": PLAIN, "transposed": transposed, "specdiff": None}  # None: each layer's plan
    times: dict[tuple, list[float]] = {(k, *shape): [] for k in kernels for shape in shapes}
    for round_ in range(repeats + 1):  # round 0 warms up
        for (kernel_name, shape, n) in times:
            with kernel_plan(model, kernels[kernel_name]):
                started = time.perf_counter()
                verifier.score(shapes[(shape, n)])
                elapsed = time.perf_counter() - started
            verifier.truncate(past)
            if round_:
                times[(kernel_name, shape, n)].append(elapsed)
    split = {}
    for n in token_counts:
        with kernel_plan(model, None):
            split[n] = profile_split(verifier, shapes[("chain", n)], past)
    weights = linear_weights(model)
    config = model.config
    attention_flops = 4 * config.num_hidden_layers * config.num_attention_heads * (
        config.hidden_size // config.num_attention_heads) * prefill  # q.k and p.v per token over the cache
    flops_per_token = 2 * weights + attention_flops
    rows = []
    for (kernel_name, shape, n), samples in times.items():
        roofline = max(weights * 4 / bandwidth, n * flops_per_token / flop_rate)
        median = statistics.median(samples)
        rows.append({"kernels": kernel_name, "shape": shape, "tokens": n, "seconds": median,
                     "roofline_s": roofline, "ratio": median / roofline})
    return {"verifier": verifier_spec, "prefill_tokens": prefill, "repeats": repeats,
            "threads": torch.get_num_threads(), "read_bytes_per_s": bandwidth, "gemm_flop_per_s": flop_rate,
            "linear_parameters": weights, "bytes_per_pass": weights * 4, "flops_per_token": flops_per_token,
            "kernel_plans": {f"{o}x{i}": p.describe() for (o, i), p in plans.items()}, "planning_s": planning_s,
            "rows": rows, "profile": {str(n): s for n, s in split.items()}}


def markdown(result: dict) -> str:
    def row(kernels, shape, n):
        return next((r for r in result["rows"] if (r["kernels"], r["shape"], r["tokens"]) == (kernels, shape, n)), None)

    def cell(r):
        return f"{r['seconds'] * 1000:.0f} ms ({r['ratio']:.2f}x)" if r else "-"
    counts = sorted({r["tokens"] for r in result["rows"]})
    trie_shape = next((r["shape"] for r in result["rows"] if r["shape"] != "chain"), "trie")
    one = row("specdiff", "chain", counts[0])
    lines = [
        f"{result['verifier']}, {result['prefill_tokens']}-token cached prefix, {result['threads']} threads, "
        f"median of {result['repeats']}. Read bandwidth {result['read_bytes_per_s'] / 1e9:.1f} GB/s, fp32 GEMM "
        f"{result['gemm_flop_per_s'] / 1e9:.0f} GFLOP/s; a pass reads {result['bytes_per_pass'] / 1e9:.2f} GB of "
        f"weights and does {result['flops_per_token'] / 1e9:.2f} GFLOP per token.",
        "",
        "| tokens | roofline | transformers' kernels, chain | transposed (before), chain | specdiff's plan, chain "
        "| specdiff's plan, " + trie_shape + " | vs 1 token (plan, chain) | matrix products / attention / rest |",
        "|---|---|---|---|---|---|---|---|"]
    for n in counts:
        ours = row("specdiff", "chain", n)
        split = result["profile"][str(n)]
        lines.append(
            f"| {n} | {ours['roofline_s'] * 1000:.0f} ms | {cell(row('transformers', 'chain', n))} | "
            f"{cell(row('transposed', 'chain', n))} | {cell(ours)} | {cell(row('specdiff', trie_shape, n))} | "
            f"{ours['seconds'] / one['seconds']:.2f}x | "
            f"{split['matrix products']:.0%} / {split['attention']:.0%} / {split['rest']:.0%} |")
    lines.append("")
    lines.append("(x): time over the roofline. Profile: the specdiff chain pass, self CPU time by operation.")
    lines.append("")
    lines.append("Kernels specdiff picked on this machine (rows: kernel), per weight shape:")
    lines.extend(f"- {shape}: {plan}" for shape, plan in result["kernel_plans"].items())
    return "\n".join(lines) + "\n"
