"""`specdiff bench`: every method measured the same way, in one run, prompt by prompt.

Methods are interleaved per prompt (their order rotates from prompt to prompt) so that
machine drift hits all alike. One JSONL record per (method, prompt), appended as it
completes; a rerun skips records already written.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from specdiff.bench.datasets import load_prompts
from specdiff.bench.methods import METHODS, MethodSettings, build_methods

PRESETS = {
    "quick": dict(dataset="humaneval", limit=3, max_new_tokens=64),
}


@dataclass(frozen=True)
class BenchConfig:
    dataset: str = "humaneval"
    data_path: str = ""
    categories: str = ""  # comma-separated; empty: all
    limit: int = 20  # prompts per category
    methods: str = ",".join(METHODS)
    max_new_tokens: int = 128
    verifier: str = "qwen2.5-coder-1.5b-instruct"
    chat: bool = True
    settings: MethodSettings = field(default_factory=MethodSettings)


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_bench(config: BenchConfig, out_dir: str | Path) -> tuple[list[dict], dict[str, str], object, list]:
    """Run what is missing; return (records, unavailable methods, verifier model, prompts)."""
    from specdiff.models.loading import encode_prompt, load_causal_lm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    categories = [c for c in config.categories.split(",") if c] or None
    prompts = load_prompts(config.dataset, config.data_path or None, categories, config.limit)
    model, tokenizer = load_causal_lm(config.verifier)
    names = [m for m in config.methods.split(",") if m]
    methods, unavailable = build_methods(names, model, tokenizer, config.settings)
    for name, reason in unavailable.items():
        print(f"method {name} unavailable: {reason}", file=sys.stderr)

    records_path = out / "records.jsonl"
    done = {(r["method"], r["question_id"]) for r in read_records(records_path)}
    encoded = {p.id: encode_prompt(tokenizer, p.turns[0], chat=config.chat) for p in prompts}
    todo = [(p, m) for i, p in enumerate(prompts) for m in _rotated(methods, i) if (m.name, p.id) not in done]
    if todo:
        warm = encode_prompt(tokenizer, "Say hi.", chat=config.chat)
        for method in methods:  # first-call overheads stay out of the measurements
            method.run(warm, 4)
    with open(records_path, "a") as handle:
        for prompt, method in tqdm(todo, desc="bench", file=sys.stderr):
            output = method.run(encoded[prompt.id], config.max_new_tokens)
            record = {"method": method.name, "question_id": prompt.id, "category": prompt.category,
                      "new_tokens": len(output.tokens), "wall_time": output.seconds,
                      "accepted_lengths": output.accepted_lengths, "drafted": output.drafted,
                      "draft_seconds": output.draft_seconds, "verify_seconds": output.verify_seconds,
                      "candidates": output.candidates, "token_ids": output.tokens}
            handle.write(json.dumps(record) + "\n")
            handle.flush()
    return read_records(records_path), unavailable, model, [(p, encoded[p.id]) for p in prompts]


def _rotated(methods: list, index: int) -> list:
    if not methods:
        return []
    shift = index % len(methods)
    return methods[shift:] + methods[:shift]
