"""`specdiff bench`: every method measured the same way, in one run, prompt by prompt.

Methods are interleaved per prompt (their order rotates from prompt to prompt) so that
machine drift hits all alike. One JSONL record per (method, prompt), appended as it
completes; a rerun skips records already written.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from specdiff.bench.datasets import load_prompts
from specdiff.bench.methods import METHODS, MethodSettings, build_methods, check_method_names
from specdiff.bench.model_cache import BenchModels
from specdiff.engine import DecodingConfig, autoregressive_generate
from specdiff.models.loading import load_tokenizer
from specdiff.models.registry import DEFAULT_VERIFIER
from specdiff.prompting import encode_conversation
from specdiff.run_folder import check_same_settings
from specdiff.tree.build import check_tree_config

# quick: the torch methods on the verifier's own weights beside the llama.cpp backend's (not the
# 0.5B assistant's: hf-assisted, sd-ar and the specdiff-v1/specdiff2 ablations would add its 2 GB
# in fp32 to a run that already needs about 11 GB at full speed)
QUICK_METHODS = ("ar", "ar-engine", "prompt-lookup", "specdiff", "dflash", "llama", "llama-specdiff", "llama-prompt-lookup")
PRESETS = {"quick": dict(dataset="humaneval", limit=3, max_new_tokens=64, methods=",".join(QUICK_METHODS))}


@dataclass(frozen=True)
class BenchConfig:
    dataset: str = "humaneval"
    data_path: str = ""
    categories: str = ""  # comma-separated; empty: all
    limit: int = 20  # prompts per category
    methods: str = ",".join(METHODS)
    max_new_tokens: int = 128
    verifier: str = DEFAULT_VERIFIER
    chat: bool = True
    all_turns: bool = False  # multi-turn prompts: every turn, the verifier's own answers as history
    settings: MethodSettings = field(default_factory=MethodSettings)


# Settings that change what a record holds; the others (limit, categories, methods) only
# choose which records a run makes, so a rerun may change them.
SELECTION_FIELDS = ("limit", "categories", "methods")


def read_records(path: Path) -> list[dict]:
    """Records of an earlier run. A last line cut short by a kill is dropped (with a
    warning, and removed from the file so that appending goes on cleanly); a corrupt line
    anywhere else is an error naming file and line."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number < len(lines):
                raise ValueError(f"{path}:{number}: corrupt record ({error.msg}); remove that line or use another --out") from None
            print(f"warning: dropping the last line of {path}: cut short by an interrupted run", file=sys.stderr)
            lines = lines[:-1]
    _rewrite_lines(path, lines)
    return records


def _rewrite_lines(path: Path, lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    if path.read_text() != text:
        partial = path.with_suffix(".partial")
        partial.write_text(text)
        os.replace(partial, path)


def prompt_digest(prompt_ids) -> str:
    """sha256 of a prompt's token ids: a record names the exact prompt it answered."""
    return hashlib.sha256(json.dumps(prompt_ids[0].tolist()).encode()).hexdigest()


def check_same_prompt(records: dict, question_id: str, prompt_ids, records_path: Path) -> None:
    """Refuse to reuse a record whose prompt was another (the prompt file was edited since)."""
    digest = prompt_digest(prompt_ids)
    stale = sorted(method for (method, qid), record in records.items()
                   if qid == question_id and record.get("prompt_sha256", digest) != digest)
    if stale:
        raise ValueError(f"{records_path}: the records of prompt {question_id!r} ({', '.join(stale)}) answered another "
                         "prompt text (was the prompt file edited?): use another --out, or restore the prompts")


@dataclass
class BenchRun:
    records: list[dict]  # this run's methods and prompts, earlier runs' records included
    unavailable: dict[str, str]  # method -> why it could not run
    models: BenchModels  # what the equality check scores divergences with
    encoded: dict[str, torch.Tensor]  # question id -> prompt token ids


def run_bench(config: BenchConfig, out_dir: str | Path) -> BenchRun:
    """Run what is missing. Inputs are checked before anything is written or loaded."""
    out = Path(out_dir)
    names = [m for m in config.methods.split(",") if m]
    check_method_names(names)
    check_tree_config(config.settings.tree)
    categories = [c for c in config.categories.split(",") if c] or None
    prompts = load_prompts(config.dataset, config.data_path or None, categories, config.limit)
    records_path = _check_out_folder(out, config)
    records = {(r["method"], r["question_id"]): r for r in read_records(records_path)}
    tokenizer = load_tokenizer(config.verifier)
    for prompt in prompts:  # an edited prompt file is refused before any model loads
        first_turn = encode_conversation(tokenizer, [prompt.turns[0]], [], config.chat)
        check_same_prompt(records, _question_id(prompt, 0, config), first_turn, records_path)
    models = BenchModels(config.verifier, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    methods, unavailable = build_methods(names, models, config.settings)
    for name, reason in unavailable.items():
        print(f"method {name} unavailable: {reason}", file=sys.stderr)
    conversations = _conversations(prompts, config)
    warm_ids = encode_conversation(tokenizer, ["Say hi."], [], config.chat)
    with Recorder(records, records_path, config, len(conversations) * len(methods), unavailable) as recorder:
        interleaved = [m for m in methods if not m.blockwise and _started(m, unavailable)]
        try:
            encoded = _run_interleaved(interleaved, prompts, models, recorder, warm_ids)
        finally:
            for method in interleaved:
                method.close()
        _run_blockwise([m for m in methods if m.blockwise], conversations, encoded, recorder, warm_ids, unavailable)
    ran = {method.name for method in methods}
    this_run = [r for key, r in records.items() if key[0] in ran and key[1] in encoded]
    return BenchRun(this_run, unavailable, models, encoded)


def _check_out_folder(out: Path, config: BenchConfig) -> Path:
    """The records file; an earlier run's settings must be this run's."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    records_path = out / "records.jsonl"
    if records_path.is_file():
        check_same_settings(out / "config.json", asdict(config), SELECTION_FIELDS, flag_names=False)
    return records_path


class Recorder:
    """Runs a method on one turn and appends its record (a rerun skips records it holds)."""

    def __init__(self, records: dict, path: Path, config: BenchConfig, total: int, unavailable: dict[str, str]):
        self.records, self.path, self.config, self.total = records, path, config, total
        self.unavailable = unavailable  # a method that fails on a prompt is reported there and runs no more
        self.bar = self.handle = None

    def __enter__(self) -> Recorder:
        self.handle = open(self.path, "a")
        self.bar = tqdm(total=self.total, desc="bench", file=sys.stderr)
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        self.handle.close()

    def done(self, method, question_id: str) -> bool:
        return (method.name, question_id) in self.records or method.name in self.unavailable

    def measure(self, method, prompt, turn: int, question_id: str, prompt_ids) -> None:
        try:
            output = method.run(prompt_ids, self.config.max_new_tokens)
        except Exception as error:  # reported, never recorded as an answer; the other methods go on
            reason = (str(error).splitlines() or [type(error).__name__])[0]
            self.unavailable[method.name] = f"failed on {question_id}: {type(error).__name__}: {reason}"
            print(f"method {method.name} {self.unavailable[method.name]}", file=sys.stderr)
            return
        record = {"method": method.name, "question_id": question_id, "category": prompt.category,
                  "prompt_sha256": prompt_digest(prompt_ids), "turn": turn + 1, "new_tokens": len(output.tokens),
                  "wall_time": output.seconds, **{k: v for k, v in asdict(output).items() if k not in ("tokens",
                                                                                                   "seconds")},
                  "token_ids": output.tokens}
        self.records[(method.name, question_id)] = record
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()


def _run_interleaved(methods: list, prompts, models: BenchModels, recorder: Recorder, warm_ids) -> dict:
    """Every in-process method on every turn, their order rotating from prompt to prompt;
    returns {question id: prompt token ids} of every turn."""
    config, tokenizer = recorder.config, models.tokenizer
    encoded, warmed = {}, False
    for index, prompt in enumerate(prompts):
        answers: list[str] = []
        for turn in range(len(prompt.turns) if config.all_turns else 1):
            question_id = _question_id(prompt, turn, config)
            prompt_ids = encode_conversation(tokenizer, list(prompt.turns[: turn + 1]), answers, config.chat)
            encoded[question_id] = prompt_ids
            check_same_prompt(recorder.records, question_id, prompt_ids, recorder.path)
            for method in _rotated(methods, index):
                recorder.bar.update(1)
                if recorder.done(method, question_id):
                    continue
                if not warmed:  # first-call overheads stay out of the measurements
                    for warm in methods:
                        warm.run(warm_ids, 4)
                    warmed = True
                recorder.measure(method, prompt, turn, question_id, prompt_ids)
            if config.all_turns and turn + 1 < len(prompt.turns):
                answer = _history_answer(recorder.records, question_id, prompt_ids, models, config)
                answers.append(tokenizer.decode(answer, skip_special_tokens=True))
    return encoded


def _run_blockwise(methods: list, conversations: list[tuple], encoded: dict, recorder: Recorder, warm_ids,
                   unavailable: dict[str, str]) -> None:
    """Each engine that holds its own copy of the verifier over every turn, one at a time."""
    for method in methods:
        todo = [(p, t, q) for p, t, q in conversations if not recorder.done(method, q)]
        recorder.bar.update(len(conversations) - len(todo))
        if not todo:
            continue
        if not _started(method, unavailable):
            continue
        try:
            method.run(warm_ids, 4)
            for prompt, turn, question_id in todo:
                recorder.measure(method, prompt, turn, question_id, encoded[question_id])
                recorder.bar.update(1)
        finally:
            method.close()


def _started(method, unavailable: dict[str, str]) -> bool:
    """``method.open()``; an engine that cannot start is reported, not faked, and the rest still run."""
    try:
        method.open()
    except Exception as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        unavailable[method.name] = f"could not start: {reason}"
        print(f"method {method.name} unavailable: {unavailable[method.name]}", file=sys.stderr)
        return False
    return True


def _question_id(prompt, turn: int, config: BenchConfig) -> str:
    return prompt.id if not config.all_turns else f"{prompt.id}/turn{turn + 1}"


def _conversations(prompts, config: BenchConfig) -> list[tuple]:
    """(prompt, turn index, question id) of every measured turn, in order."""
    return [(prompt, turn, _question_id(prompt, turn, config))
            for prompt in prompts for turn in range(len(prompt.turns) if config.all_turns else 1)]


def _history_answer(records, question_id, prompt_ids, models: BenchModels, config: BenchConfig) -> list[int]:
    """The verifier's own greedy answer to a turn: from a plain method's records, else decoded here."""
    for name in ("ar", "ar-engine", "llama"):
        if (name, question_id) in records:
            return records[(name, question_id)]["token_ids"]
    return autoregressive_generate(prompt_ids, models.verifier, DecodingConfig(max_new_tokens=config.max_new_tokens),
                                   models.eos).tokens


def _rotated(methods: list, index: int) -> list:
    if not methods:
        return []
    shift = index % len(methods)
    return methods[shift:] + methods[:shift]
