"""`specdiff calibrate train`: adaptation, then alignment by streak distillation.

Stage 1 (adaptation, ``adapt_steps``): cut a diffusion drafter from the first L layers of
the base causal LM and train block-only LoRA adapters plus the MASK embedding to predict
masked blocks after a causal prefix (cross-entropy on plain text).
Stage 2 (alignment, ``align_steps``): the same parameters on the verifier's teacher
completions with ``align_loss``: streak (SpecDiff-2), ce_streak, or ce (AR distillation).

Each step draws one sequence per process, runs the frozen base over it once (the prefix
keys and values), then ``windows_per_step`` mask blocks at different offsets in one batch.
Runs in one process or under ``torchrun --nproc-per-node N`` (DDP; gloo on CPU, NCCL on
GPUs). Checkpoints every ``checkpoint_every`` steps hold the adapters, optimizer,
scheduler and step; data is a pure function of (seed, step, rank), so a resumed run
continues exactly.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from transformers import DynamicCache

from specdiff.calibrate.checkpoints import check_run_folder, restore_checkpoint, save_checkpoint
from specdiff.calibrate.data import TeacherSequences, TextSequences, step_rng, window_starts
from specdiff.calibrate.loop import StepLog, adamw_with_warmup, init_distributed
from specdiff.calibrate.losses import window_loss
from specdiff.calibrate.prompts import code_texts, gsm8k_answers
from specdiff.calibrate.teacher import read_shards
from specdiff.calibrate.windows import WindowBatch, make_full_windows, make_windows
from specdiff.drafters.standalone.dream import is_masked_diffusion_lm, load_dream
from specdiff.drafters.standalone.files import DRAFTER_DELTAS, load_deltas, save_drafter
from specdiff.drafters.standalone.from_causal_lm import diffusion_lm_from_causal_lm
from specdiff.drafters.standalone.network import DiffusionLM, file_name, is_own_parameter
from specdiff.models.loading import load_causal_lm
from specdiff.models.tensor_files import load_safetensors


@dataclass(frozen=True)
class TrainConfig:
    base: str = field(default="qwen2.5-coder-0.5b-instruct", metadata={
        "help": "a causal LM to cut a drafter from, or a Dream-architecture diffusion LM (Dream, DiffuCoder)"})
    num_layers: int | None = field(default=None, metadata={"help": "the base's first N layers (none given: all)"})
    gamma: int = 16
    gsm8k: str = "../shared/data/gsm8k/train.jsonl"  # adaptation text (train split only)
    code_root: str = ""  # Python sources for adaptation text (default: the standard library)
    teacher: str = "runs/teacher"  # alignment data from `specdiff calibrate data`
    adapt_steps: int = 40
    align_steps: int = 40
    align_loss: str = "streak"
    init_from: str = ""  # a drafter folder whose adapters start this run
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lr: float = 5e-4
    warmup_steps: int = 5
    windows_per_step: int = 16
    max_seq_len: int = 320
    checkpoint_every: int = 10
    seed: int = 0
    data_ranks: int = 1  # each process averages the losses of this many ranks' data: N-process DDP, in one process

    @property
    def total_steps(self) -> int:
        return self.adapt_steps + self.align_steps


class WindowObjective(nn.Module):
    """Loss of one batch of windows over one sequence; the module DDP wraps."""

    def __init__(self, network: DiffusionLM):
        super().__init__()
        self.network = network

    def forward(self, ids: torch.Tensor, windows: WindowBatch, loss_name: str):
        if windows.rows is None:  # causal prefix: one frozen base pass shared by every window
            seq_len = ids.shape[0]
            prefix = DynamicCache(config=self.network.config)
            with torch.no_grad():
                causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()[None]
                self.network(ids[None], torch.arange(seq_len)[None], causal, prefix)  # no rows adapted
            prefix.batch_repeat_interleave(len(windows.block_ids))
            hidden = self.network(windows.block_ids, windows.positions, windows.attn_mask, prefix, adapted_from=0)
        else:  # bidirectional: each window is a pass of its own
            hidden = self.network(windows.block_ids, windows.positions, windows.attn_mask, adapted_from=0)
            hidden = hidden.gather(1, windows.rows[..., None].expand(-1, -1, hidden.shape[-1]))
        log_probs = self.network.lm_head(hidden).float().log_softmax(-1)  # [W, gamma, vocab]
        log_q = log_probs.gather(-1, windows.targets[..., None])[..., 0]
        greedy_hit = (log_probs.argmax(-1) == windows.targets).float() * windows.valid
        return window_loss(loss_name, log_q, windows.valid), log_q.detach(), greedy_hit


def trainable_state(network: DiffusionLM) -> dict[str, torch.Tensor]:
    """The trained tensors, under the names drafter files use."""
    return {file_name(name): p.detach() for name, p in network.named_parameters() if p.requires_grad}


def drafter_config(cfg: TrainConfig, step: int, num_layers: int) -> dict:
    return {"format": "specdiff-diffusion-drafter", "base": cfg.base, "num_layers": num_layers,
            "gamma": cfg.gamma, "lora": {"r": cfg.lora_rank, "alpha": cfg.lora_alpha},
            "training": {**asdict(cfg), "steps_done": step}}


# Settings a resumed run may change: more alignment steps, another checkpoint interval.
# Every other setting shapes the model or the data stream, so it must match the run's.
RESUMABLE_CHANGES = ("align_steps", "checkpoint_every")


def build_drafter_network(cfg: TrainConfig):
    """The drafter to train: cut from a causal LM, or a Dream-architecture diffusion LM
    (bidirectional; adapters then act on every row), with fresh LoRA adapters."""

    if is_masked_diffusion_lm(cfg.base):
        network, tokenizer = load_dream(cfg.base, num_layers=cfg.num_layers)
    else:
        base, tokenizer = load_causal_lm(cfg.base)
        network = diffusion_lm_from_causal_lm(base, cfg.num_layers)
        del base
    network.add_lora(cfg.lora_rank, cfg.lora_alpha, seed=cfg.seed)
    if cfg.init_from:
        load_deltas(network, load_safetensors(Path(cfg.init_from) / DRAFTER_DELTAS), None)
    for name, param in network.named_parameters():
        param.requires_grad = is_own_parameter(name)
    return network, tokenizer


def stage_data(cfg: TrainConfig, tokenizer, vocab_size: int):
    adapt = TextSequences(gsm8k_answers(cfg.gsm8k) + code_texts(cfg.code_root or None), tokenizer, cfg.max_seq_len) if cfg.adapt_steps else None
    align = TeacherSequences(read_shards(cfg.teacher), cfg.max_seq_len, vocab_size) if cfg.align_steps else None
    if align is not None and align.filtering:
        print(f"calibrate train: {align.filtering}", file=sys.stderr)
    return adapt, align


def save_final(folder: Path, cfg: TrainConfig, network, step: int) -> None:
    """The trained drafter as it ships: its trained tensors in bf16, beside its config."""
    deltas = {name: t.to(torch.bfloat16) for name, t in trainable_state(network).items()}
    save_drafter(folder, deltas, drafter_config(cfg, step, network.config.num_hidden_layers))


def train(cfg: TrainConfig, out_dir: str | Path, stop_after: int | None = None) -> Path | None:
    """Run (or resume) training; returns the final drafter folder, or None when
    ``stop_after`` steps of this invocation ended it early (resume by running again)."""
    world, rank = init_distributed()
    out = Path(out_dir)
    check_run_folder(cfg, out, RESUMABLE_CHANGES)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    network, tokenizer = build_drafter_network(cfg)
    objective = WindowObjective(network)
    model = nn.parallel.DistributedDataParallel(objective) if world > 1 else objective
    optimizer, scheduler = adamw_with_warmup([p for p in network.parameters() if p.requires_grad], cfg.lr,
                                             cfg.warmup_steps)
    step = restore_checkpoint(out, lambda folder: load_deltas(network, load_safetensors(folder / DRAFTER_DELTAS), None),
                              optimizer, scheduler)
    adapt, align = stage_data(cfg, tokenizer, network.config.vocab_size)
    log = StepLog(out, cfg.total_steps, step, "calibrate", enabled=rank == 0)
    stop_at = cfg.total_steps if stop_after is None else min(cfg.total_steps, step + stop_after)
    while step < stop_at:
        adapting = step < cfg.adapt_steps
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for data_rank in range(rank * cfg.data_ranks, (rank + 1) * cfg.data_ranks):
            rng = step_rng(cfg.seed, step, data_rank)
            sequence = (adapt if adapting else align).draw(rng)
            windows = (make_full_windows if network.bidirectional else make_windows)(
                sequence.ids, window_starts(sequence, cfg.windows_per_step, rng), cfg.gamma, network.mask_token_id)
            loss, log_q, greedy_hit = model(sequence.ids, windows, "ce" if adapting else cfg.align_loss)
            (loss / cfg.data_ranks).backward()  # DDP then averages over processes
        optimizer.step()
        scheduler.step()
        step += 1
        log.write(step, loss.detach(), log_q, greedy_hit, windows.valid, time.perf_counter() - started,
                  stage="adapt" if adapting else "align")
        if rank == 0 and (step % cfg.checkpoint_every == 0 or step == stop_at):
            save_checkpoint(out, step, lambda folder: save_drafter(folder, trainable_state(network), drafter_config(
                cfg, step, network.config.num_hidden_layers)), optimizer, scheduler)
    log.close()
    # DDP's reducer holds the process group: drop it while the group lives, or its destructor
    # (on this thread, holding the GIL) joins gloo threads that wait for the GIL (seen hanging).
    del model
    finished = step >= cfg.total_steps
    if finished and rank == 0:
        save_final(out / "final", cfg, network, step)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return out / "final" if finished else None
