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
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    requests: int
    completion_tokens: int  # of the requests that were answered
    wall_seconds: float
    tokens_per_s: float
    latency_mean_s: float  # of the answered requests (nan when none was)
    latency_p50_s: float
    latency_p90_s: float
    failed: int = 0
    failures: tuple[str, ...] = ()  # "request N: what went wrong", one per failed request


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def run_level(client, model: str, prompts: list[str], concurrency: int, max_tokens: int) -> LevelResult:
    """Send every prompt, at most ``concurrency`` at a time. A request that fails (an HTTP
    error, a timeout, a dropped connection) is counted and named, never retried."""
    def one(index: int) -> tuple[float, int, str | None]:
        started = time.perf_counter()
        try:
            reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompts[index]}],
                                                   temperature=0, max_tokens=max_tokens)
        except Exception as error:  # noqa: BLE001 - any failure of one request is reported, the level goes on
            first_line = (str(error).strip().splitlines() or [""])[0][:200]
            return time.perf_counter() - started, 0, f"request {index}: {type(error).__name__}: {first_line}"
        return time.perf_counter() - started, reply.usage.completion_tokens, None

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, range(len(prompts))))
    wall = time.perf_counter() - started
    latencies = [seconds for seconds, _, error in results if error is None]
    failures = tuple(error for _, _, error in results if error is not None)
    tokens = sum(count for _, count, _ in results)
    nan = float("nan")
    return LevelResult(concurrency, len(prompts), tokens, wall, tokens / wall,
                       statistics.mean(latencies) if latencies else nan,
                       percentile(latencies, 0.5) if latencies else nan,
                       percentile(latencies, 0.9) if latencies else nan, len(failures), failures)


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise ValueError(f"--concurrency takes comma-separated numbers >= 1 like 1,4,16, got {text!r}")
    return levels


def served_model(client, url: str) -> str:
    """The first model the server at ``url`` lists; one line when it cannot be asked."""
    import openai

    hint = "" if url.rstrip("/").endswith("/v1") else " (the URL of an OpenAI-compatible server ends in /v1)"
    try:
        return client.models.list().data[0].id
    except openai.APIConnectionError:
        raise ValueError(f"cannot connect to {url}{hint}: is `specdiff serve` running there?") from None
    except openai.APIStatusError as error:
        raise ValueError(f"{url} answered HTTP {error.status_code} to GET /models{hint}") from None
    except (IndexError, AttributeError):
        raise ValueError(f"{url} lists no model: pass --model NAME") from None


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
