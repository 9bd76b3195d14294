"""Teacher trajectories: the verifier's own completions of training prompts.

Two engines, the same shards: transformers' batched ``generate`` (left padding), or
vLLM's offline engine (``--engine vllm``, continuous batching; greedy only, since its
sampling is not reproducible per shard the way a seeded ``generate`` is).
Output: ``shard-NNNNN.jsonl`` files of {"prompt_ids", "completion_ids"} token ids, each
written to a temporary name and renamed when complete, so an interrupted run resumes at
the first missing shard and never reads a half-written one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from specdiff.calibrate.prompts import mixed_prompts
from specdiff.models.loading import load_causal_lm, load_tokenizer
from specdiff.models.registry import DEFAULT_VERIFIER
from specdiff.prompting import encode_prompt, eos_token_ids, truncate_at_eos
from specdiff.run_folder import check_same_settings
from specdiff.serving.environment import import_vllm, offline_engine

ENGINES = ("transformers", "vllm")


@dataclass(frozen=True)
class TeacherConfig:
    verifier: str = DEFAULT_VERIFIER
    gsm8k: str = "../shared/data/gsm8k/train.jsonl"
    num_prompts: int = 256
    completions_per_prompt: int = 1
    batch_size: int = 8
    max_new_tokens: int = 128
    temperature: float | None = field(default=None, metadata={
        "help": "sampling temperature (default: 0.5, the SpecDiff-2 reference recipe, with transformers; 0, greedy, "
                "with vLLM, which makes greedy data only; 0 is what a DFlash drafter learns)"})
    top_p: float = 0.95
    seed: int = 0
    engine: str = field(default="transformers", metadata={
        "choices": ENGINES, "help": "vllm: vLLM's offline engine (needs the vllm extra; greedy only)"})
    general_prompts: bool = field(default=True, metadata={
        "help": "a third of the prompts are general instructions over passages (else half math, half code)"})

    def __post_init__(self) -> None:
        if self.temperature is None:  # frozen: the resolved default is stored once, here
            object.__setattr__(self, "temperature", 0.0 if self.engine == "vllm" else 0.5)
        if self.engine == "vllm" and self.temperature > 0:
            raise ValueError("--engine vllm makes greedy data only: use --temperature 0 (its default)")
        if not self.temperature >= 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")
        for name in ("num_prompts", "completions_per_prompt", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"--seed must be in 0..2**63-1, got {self.seed}")


def shard_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"shard-{index:05d}.jsonl"


def read_shards(out_dirs: str | Path) -> list[dict]:
    """All complete records in ``out_dirs`` (one folder, or several separated by commas)."""
    records = []
    for out_dir in str(out_dirs).split(","):
        if not Path(out_dir.strip()).is_dir():
            raise FileNotFoundError(f"no teacher data folder {out_dir.strip()}: run `specdiff calibrate data` first")
        for path in sorted(Path(out_dir.strip()).glob("shard-*.jsonl")):
            with open(path) as handle:
                for number, line in enumerate(handle, 1):
                    if line.strip():
                        records.append(_record(line, path, number))
    return records


def _is_token_ids(value) -> bool:
    return isinstance(value, list) and all(type(token) is int and token >= 0 for token in value)


def _record(line: str, path: Path, number: int) -> dict:
    try:
        record = json.loads(line)
        if isinstance(record, dict) and all(_is_token_ids(record.get(k)) for k in ("prompt_ids", "completion_ids")):
            return record
    except ValueError:
        pass
    raise ValueError(f"{path} line {number} is not a teacher record: delete the shard and rerun `specdiff "
                     "calibrate data` with the same flags to make it again")


@torch.inference_mode()
def generate_batch(model, tokenizer, prompts: list[str], config: TeacherConfig, seed: int) -> list[dict]:
    encoded = [encode_prompt(tokenizer, text)[0] for text in prompts]
    width = max(len(ids) for ids in encoded)
    vocab_size = model.get_input_embeddings().num_embeddings
    outside = [int(ids.max()) for ids in encoded if int(ids.max()) >= vocab_size]
    if outside:
        raise ValueError(f"{config.verifier}: its tokenizer gives token id {outside[0]}, outside the model's vocabulary "
                         f"of {vocab_size}: the tokenizer does not belong to this model")
    pad = tokenizer.pad_token_id  # masked out, but it must still be a row of the embedding
    if pad is None or not 0 <= pad < vocab_size:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids):] = ids
        attention[row, width - len(ids):] = 1
    # transformers' generate samples from the global RNG; seeding it per shard makes
    # every shard reproducible on its own, which exact resumption needs.
    torch.manual_seed(seed)
    sampling = (dict(do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=0)
                if config.temperature > 0 else dict(do_sample=False))  # 0: the verifier's greedy answers
    output = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=config.max_new_tokens,
                            pad_token_id=pad, **sampling)
    stops = eos_token_ids(model, tokenizer)
    records = []
    for row, ids in enumerate(encoded):
        completion, _ = truncate_at_eos(output[row, width:].tolist(), stops)
        records.append({"prompt_ids": ids.tolist(), "completion_ids": completion})
    return records


class TransformersEngine:
    def __init__(self, config: TeacherConfig):
        self.config = config
        self.model, self.tokenizer = load_causal_lm(config.verifier)

    def generate(self, prompts: list[str], seed: int) -> list[dict]:
        return generate_batch(self.model, self.tokenizer, prompts, self.config, seed)


class VllmEngine:
    """Greedy completions from vLLM's offline engine, on the folder the verifier name resolves to."""

    def __init__(self, config: TeacherConfig):
        vllm = import_vllm()
        self.config, self.vllm = config, vllm
        self.tokenizer = load_tokenizer(config.verifier)
        self.llm = offline_engine(config.verifier, seed=config.seed)

    def generate(self, prompts: list[str], seed: int) -> list[dict]:
        encoded = [encode_prompt(self.tokenizer, text)[0].tolist() for text in prompts]
        params = self.vllm.SamplingParams(temperature=0.0, max_tokens=self.config.max_new_tokens)
        outputs = self.llm.generate([self.vllm.TokensPrompt(prompt_token_ids=ids) for ids in encoded], params,
                                    use_tqdm=False)
        return [{"prompt_ids": ids, "completion_ids": list(output.outputs[0].token_ids)}
                for ids, output in zip(encoded, outputs)]


def generate_teacher_data(config: TeacherConfig, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file: give a folder for the teacher shards")
    if any(out_dir.glob("shard-*.jsonl")):  # resuming: the shards there must be this run's
        check_same_settings(out_dir / "config.json", asdict(config))
    prompts = mixed_prompts(config.gsm8k, config.num_prompts, config.seed, general=config.general_prompts)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the prompts exist: a refused run leaves no folder
    (out_dir / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    prompts = [p for p in prompts for _ in range(config.completions_per_prompt)]
    batches = [prompts[i:i + config.batch_size] for i in range(0, len(prompts), config.batch_size)]
    todo = [i for i in range(len(batches)) if not shard_path(out_dir, i).exists()]
    if not todo:
        return out_dir
    engine = VllmEngine(config) if config.engine == "vllm" else TransformersEngine(config)
    tokens = 0
    started = time.perf_counter()
    with tqdm(total=len(batches), initial=len(batches) - len(todo), desc="teacher", file=sys.stderr) as bar:
        for index in todo:
            records = engine.generate(batches[index], config.seed * 100_003 + index)
            partial = shard_path(out_dir, index).with_suffix(".tmp")
            partial.write_text("".join(json.dumps(r) + "\n" for r in records))
            os.replace(partial, shard_path(out_dir, index))
            tokens += sum(len(r["completion_ids"]) for r in records)
            rate = tokens / (time.perf_counter() - started)
            bar.set_postfix(tokens=tokens, tok_s=f"{rate:.1f}")
            bar.update(1)
            with open(out_dir / "progress.log", "a") as log:
                log.write(f"{time.strftime('%H:%M:%S')} shard {index} done ({config.engine}), "
                          f"{tokens} tokens this run, {rate:.1f} tok/s\n")
    return out_dir
