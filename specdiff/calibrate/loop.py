"""What both drafter trainers share: distributed setup, the warm-up schedule, and the
per-step progress line and log record."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from specdiff.calibrate.losses import expected_streak


def init_distributed() -> tuple[int, int]:
    """(world size, rank): one process, or ``torchrun`` (gloo on CPU, NCCL on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if world > 1 and "OMP_NUM_THREADS" not in os.environ:  # share the cores between processes
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return world, dist.get_rank() if world > 1 else 0


def adamw_with_warmup(params, lr: float, warmup_steps: int):
    """AdamW (no weight decay) and a linear warm-up to ``lr`` over ``warmup_steps``."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, warmup_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))


class StepLog:
    """A progress bar and one JSON line per step in ``train.log`` (rank 0 only). A run
    resumed at step ``initial`` first drops what the log holds after that step (steps
    logged after the last checkpoint, before an interruption): they are trained again."""

    def __init__(self, out: Path, total: int, initial: int, desc: str, enabled: bool = True):
        self.enabled = enabled
        self.bar = tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, disable=not enabled)
        if enabled:
            keep_log_until(out / "train.log", initial)
        self.file = open(out / "train.log", "a") if enabled else None

    def write(self, step: int, loss: Tensor, log_q: Tensor, greedy_hit: Tensor, valid: Tensor, seconds: float,
              **extra) -> None:
        """log_q, greedy_hit, valid [windows, gamma]: per-slot log-probabilities of the targets,
        argmax hits and which slots have targets."""
        if not self.enabled:
            return
        streak = float(expected_streak(log_q, valid))
        greedy = float(greedy_hit.cumprod(-1).sum(-1).mean())
        slot_acc = (greedy_hit.sum(0) / valid.sum(0).clamp_min(1)).tolist()
        self.bar.set_postfix(**extra, loss=f"{float(loss):.3f}", streak=f"{streak:.2f}", greedy=f"{greedy:.2f}")
        self.bar.update(1)
        self.file.write(json.dumps({"step": step, **extra, "loss": float(loss), "expected_streak": streak,
                                    "greedy_streak": greedy, "slot_acc": [round(x, 3) for x in slot_acc],
                                    "seconds": round(seconds, 2)}) + "\n")
        self.file.flush()

    def note(self, step: int, **fields) -> None:
        """One extra JSON line (e.g. held-out acceptance at a checkpoint), also shown under the bar."""
        if not self.enabled:
            return
        self.bar.write(f"step {step}: " + json.dumps(fields))
        self.file.write(json.dumps({"step": step, **fields}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.bar.close()
        if self.file:
            self.file.close()


def keep_log_until(path: Path, step: int) -> None:
    """Rewrite the JSON-lines log at ``path`` (if any) without lines after ``step`` and without
    a torn last line, by atomic rename."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(kept))
    os.replace(partial, path)
