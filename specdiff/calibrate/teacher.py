"""Teacher trajectories: the verifier's own completions of training prompts.

Batched, KV-cached generation through transformers' ``generate`` (left padding).
Output: ``shard-NNNNN.jsonl`` files of {"prompt_ids", "completion_ids"} token ids, each
written to a temporary name and renamed when complete, so an interrupted run resumes at
the first missing shard and never reads a half-written one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from specdiff.models.registry import DEFAULT_VERIFIER


@dataclass(frozen=True)
class TeacherConfig:
    verifier: str = DEFAULT_VERIFIER
    gsm8k: str = "../shared/data/gsm8k/train.jsonl"
    num_prompts: int = 256
    completions_per_prompt: int = 1
    batch_size: int = 8
    max_new_tokens: int = 128
    temperature: float = 0.5  # the SpecDiff-2 reference recipe; 0: greedy (what a DFlash drafter learns)
    top_p: float = 0.95
    seed: int = 0


def shard_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"shard-{index:05d}.jsonl"


def read_shards(out_dir: str | Path) -> list[dict]:
    """All complete records in ``out_dir``."""
    records = []
    for path in sorted(Path(out_dir).glob("shard-*.jsonl")):
        with open(path) as handle:
            records.extend(json.loads(line) for line in handle if line.strip())
    return records


@torch.inference_mode()
def generate_batch(model, tokenizer, prompts: list[str], config: TeacherConfig, seed: int) -> list[dict]:
    from specdiff.prompting import encode_prompt, eos_token_ids, truncate_at_eos

    encoded = [encode_prompt(tokenizer, text)[0] for text in prompts]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
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


def generate_teacher_data(config: TeacherConfig, out_dir: str | Path) -> Path:
    from specdiff.calibrate.prompts import mixed_prompts
    from specdiff.models.loading import load_causal_lm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    prompts = mixed_prompts(config.gsm8k, config.num_prompts, config.seed)
    prompts = [p for p in prompts for _ in range(config.completions_per_prompt)]
    batches = [prompts[i:i + config.batch_size] for i in range(0, len(prompts), config.batch_size)]
    todo = [i for i in range(len(batches)) if not shard_path(out_dir, i).exists()]
    if not todo:
        return out_dir
    model, tokenizer = load_causal_lm(config.verifier)
    tokens = 0
    started = time.perf_counter()
    with tqdm(total=len(batches), initial=len(batches) - len(todo), desc="teacher", file=sys.stderr) as bar:
        for index in todo:
            records = generate_batch(model, tokenizer, batches[index], config, config.seed * 100_003 + index)
            partial = shard_path(out_dir, index).with_suffix(".tmp")
            partial.write_text("".join(json.dumps(r) + "\n" for r in records))
            os.replace(partial, shard_path(out_dir, index))
            tokens += sum(len(r["completion_ids"]) for r in records)
            rate = tokens / (time.perf_counter() - started)
            bar.set_postfix(tokens=tokens, tok_s=f"{rate:.1f}")
            bar.update(1)
            with open(out_dir / "progress.log", "a") as log:
                log.write(f"{time.strftime('%H:%M:%S')} shard {index} done, {tokens} tokens this run, {rate:.1f} tok/s\n")
    return out_dir
