"""``specdiff bench-serve``: throughput and latency of a running OpenAI-compatible server at
several concurrency levels, with a bounded client on this machine.

Each level sends ``requests`` chat completions (greedy, ``max_tokens`` each) from a pool of
``concurrency`` threads, so at most that many are in flight; it reports completion tokens
per second over the level's wall time and per-request latency (mean, p50, p90). Prompts
come from a bench data set (HumanEval by default). Written here rather than using
``vllm bench serve`` so that it runs with only the ``openai`` client and knows our data sets.
"""

from __future__ import annotations

import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    requests: int
    completion_tokens: int
    wall_seconds: float
    tokens_per_s: float
    latency_mean_s: float
    latency_p50_s: float
    latency_p90_s: float


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def run_level(client, model: str, prompts: list[str], concurrency: int, max_tokens: int) -> LevelResult:
    def one(text: str) -> tuple[float, int]:
        started = time.perf_counter()
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                               temperature=0, max_tokens=max_tokens)
        return time.perf_counter() - started, reply.usage.completion_tokens

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, prompts))
    wall = time.perf_counter() - started
    latencies = [seconds for seconds, _ in results]
    tokens = sum(count for _, count in results)
    return LevelResult(concurrency, len(prompts), tokens, wall, tokens / wall, statistics.mean(latencies),
                       percentile(latencies, 0.5), percentile(latencies, 0.9))


def cmd_bench_serve(args) -> int:
    from openai import OpenAI

    from specdiff.bench.datasets import load_prompts

    levels = [int(x) for x in args.concurrency.split(",") if x]
    if not levels or min(levels) < 1:
        raise ValueError(f"--concurrency must list numbers >= 1, got {args.concurrency!r}")
    client = OpenAI(base_url=args.url, api_key="none", max_retries=0, timeout=3600)
    model = args.model or client.models.list().data[0].id
    pool = [p.turns[0] for p in load_prompts(args.dataset, args.data_path or None, None, None)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run_level(client, model, pool[:1], 1, 4)  # warm-up, not recorded
    for level in levels:
        count = max(args.requests, level)
        prompts = [pool[i % len(pool)] for i in range(count)]
        result = run_level(client, model, prompts, level, args.max_tokens)
        with open(out, "a") as handle:
            handle.write(json.dumps({"label": args.label, "model": model, **asdict(result)}) + "\n")
        print(f"{args.label}: concurrency {level}: {result.tokens_per_s:.2f} tokens/s, latency mean "
              f"{result.latency_mean_s:.1f} s (p50 {result.latency_p50_s:.1f}, p90 {result.latency_p90_s:.1f})")
    print(f"results in {out}, plot in {plot_levels(out)}")
    return 0


def plot_levels(results_path: Path) -> Path:
    """Throughput and mean latency against concurrency, one line per label in the file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = sorted((r for r in rows if r["label"] == label), key=lambda r: r["concurrency"])
        levels = [r["concurrency"] for r in mine]
        left.plot(levels, [r["tokens_per_s"] for r in mine], marker="o", label=label)
        right.plot(levels, [r["latency_mean_s"] for r in mine], marker="o", label=label)
    for axis, title in ((left, "completion tokens/s (all requests)"), (right, "mean request latency (s)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent requests")
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=8)
    fig.tight_layout()
    path = results_path.with_suffix(".png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def register(commands) -> None:
    bench = commands.add_parser("bench-serve", help="throughput and latency of a running server at several concurrencies")
    bench.add_argument("--url", default="http://127.0.0.1:8000/v1")
    bench.add_argument("--model", default=None, help="served model name (default: the server's first)")
    bench.add_argument("--label", required=True, help="names this server setup in the results (e.g. plain, dflash)")
    bench.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    bench.add_argument("--requests", type=int, default=4, help="requests per level (at least the level)")
    bench.add_argument("--max-tokens", type=int, default=128)
    bench.add_argument("--dataset", default="humaneval")
    bench.add_argument("--data-path", default="")
    bench.add_argument("--out", default="runs/serve-bench.jsonl", help="results are appended, one line per level")
    bench.set_defaults(run=cmd_bench_serve)
