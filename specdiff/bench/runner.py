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
from specdiff.models.loading import encode_conversation

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
    all_turns: bool = False  # multi-turn prompts: every turn, the verifier's own answers as history
    settings: MethodSettings = field(default_factory=MethodSettings)


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_bench(config: BenchConfig, out_dir: str | Path) -> tuple[list[dict], dict[str, str], object, dict]:
    """Run what is missing; return (records, unavailable methods, verifier model,
    {question id: prompt token ids})."""
    from specdiff.models.loading import load_causal_lm

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
    records = {(r["method"], r["question_id"]): r for r in read_records(records_path)}
    turns_total = sum(len(p.turns) if config.all_turns else 1 for p in prompts)
    encoded: dict[str, object] = {}
    warmed = False
    with open(records_path, "a") as handle, tqdm(total=turns_total * len(methods), desc="bench", file=sys.stderr) as bar:
        for index, prompt in enumerate(prompts):
            answers: list[str] = []
            for turn in range(len(prompt.turns) if config.all_turns else 1):
                question_id = prompt.id if not config.all_turns else f"{prompt.id}/turn{turn + 1}"
                prompt_ids = encode_conversation(tokenizer, list(prompt.turns[: turn + 1]), answers, config.chat)
                encoded[question_id] = prompt_ids
                for method in _rotated(methods, index):
                    bar.update(1)
                    if (method.name, question_id) in records:
                        continue
                    if not warmed:  # first-call overheads stay out of the measurements
                        for warm in methods:
                            warm.run(encode_conversation(tokenizer, ["Say hi."], [], config.chat), 4)
                        warmed = True
                    output = method.run(prompt_ids, config.max_new_tokens)
                    record = {"method": method.name, "question_id": question_id, "category": prompt.category,
                              "turn": turn + 1, "new_tokens": len(output.tokens), "wall_time": output.seconds,
                              "accepted_lengths": output.accepted_lengths, "drafted": output.drafted,
                              "draft_seconds": output.draft_seconds, "verify_seconds": output.verify_seconds,
                              "candidates": output.candidates, "token_ids": output.tokens}
                    records[(method.name, question_id)] = record
                    handle.write(json.dumps(record) + "\n")
                    handle.flush()
                if config.all_turns and turn + 1 < len(prompt.turns):
                    answers.append(tokenizer.decode(_history_answer(records, methods, question_id, prompt_ids,
                                                                    model, tokenizer, config), skip_special_tokens=True))
    return list(records.values()), unavailable, model, encoded


def _history_answer(records, methods, question_id, prompt_ids, model, tokenizer, config) -> list[int]:
    """The verifier's own greedy answer to a turn: from the reference records, else decoded here."""
    for name in ("ar", "ar-engine"):
        if (name, question_id) in records:
            return records[(name, question_id)]["token_ids"]
    from specdiff.engine import DecodingConfig, autoregressive_generate
    from specdiff.models.loading import eos_token_ids
    from specdiff.verifier import Verifier

    return autoregressive_generate(prompt_ids, Verifier(model), DecodingConfig(max_new_tokens=config.max_new_tokens),
                                   eos_token_ids(model, tokenizer)).tokens


def _rotated(methods: list, index: int) -> list:
    if not methods:
        return []
    shift = index % len(methods)
    return methods[shift:] + methods[:shift]
