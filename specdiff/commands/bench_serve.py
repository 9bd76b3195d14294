"""``specdiff bench-serve``: a load test of a running server (``bench/serve_load.py``)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from specdiff.bench.datasets import load_prompts
from specdiff.bench.serve_load import parse_levels, plot_levels, run_level, served_model


def cmd_bench_serve(args) -> int:
    levels = parse_levels(args.concurrency)
    for flag, value in (("--requests", args.requests), ("--max-tokens", args.max_tokens), ("--timeout", args.timeout)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    try:
        from openai import OpenAI  # optional: the vllm extra
    except ImportError:
        raise ValueError("bench-serve needs the openai client: pip install 'specdiff[vllm]' (or just openai)") from None
    client = OpenAI(base_url=args.url, api_key="none", max_retries=0, timeout=args.timeout)
    model = args.model or served_model(client, args.url)
    pool = [p.turns[0] for p in load_prompts(args.dataset, args.data_path or None, None, None)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    warm = run_level(client, model, pool[:1], 1, 4)  # warm-up, not recorded
    if warm.failed:
        raise ValueError(f"the server at {args.url} did not answer a first request ({warm.failures[0]})")
    failed = 0
    for level in levels:
        count = max(args.requests, level)
        prompts = [pool[i % len(pool)] for i in range(count)]
        result = run_level(client, model, prompts, level, args.max_tokens)
        failed += result.failed
        with open(out, "a") as handle:
            handle.write(json.dumps({"label": args.label, "model": model, **asdict(result)}) + "\n")
        print(f"{args.label}: concurrency {level}: {result.tokens_per_s:.2f} tokens/s, latency mean "
              f"{result.latency_mean_s:.1f} s (p50 {result.latency_p50_s:.1f}, p90 {result.latency_p90_s:.1f})"
              + (f"; {result.failed} of {count} requests FAILED:" if result.failed else ""))
        for failure in result.failures:
            print(f"  {failure}")
    print(f"results in {out}, plot in {plot_levels(out)}")
    return 1 if failed else 0


def register(commands) -> None:
    bench = commands.add_parser("bench-serve", help="throughput and latency of a running server at several concurrencies")
    bench.add_argument("--url", default="http://127.0.0.1:8000/v1")
    bench.add_argument("--model", default=None, help="served model name (default: the server's first)")
    bench.add_argument("--label", required=True, help="names this server setup in the results (e.g. plain, dflash)")
    bench.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    bench.add_argument("--requests", type=int, default=4, help="requests per level (at least the level)")
    bench.add_argument("--max-tokens", type=int, default=128)
    bench.add_argument("--timeout", type=float, default=600,
                       help="seconds one request may take before it is counted as failed")
    bench.add_argument("--dataset", default="humaneval")
    bench.add_argument("--data-path", default="")
    bench.add_argument("--out", default="runs/serve-bench.jsonl", help="results are appended, one line per level")
    bench.set_defaults(run=cmd_bench_serve)
