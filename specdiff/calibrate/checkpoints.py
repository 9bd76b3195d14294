"""Checkpoints of both trainers: ``checkpoint-NNNNNN`` folders in a run folder, each the
drafter's weights (written by the trainer's own ``save_weights``) plus ``trainer.pt`` (optimizer,
scheduler, step). A checkpoint exists only once complete (written as ``.partial-NNNNNN``, then
renamed), the newest ``keep`` stay, and a resumed run restores the latest complete one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from specdiff.models.tensor_files import load_plain
from specdiff.run_folder import check_same_settings


def save_checkpoint(out: Path, step: int, save_weights: Callable[[Path], None], optimizer, scheduler,
                    keep: int = 2) -> None:
    final, partial = out / f"checkpoint-{step:06d}", out / f".partial-{step:06d}"
    shutil.rmtree(partial, ignore_errors=True)
    save_weights(partial)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step},
               partial / "trainer.pt")
    os.replace(partial, final)  # a checkpoint exists only once complete
    for old in sorted(out.glob("checkpoint-*"))[:-keep]:
        shutil.rmtree(old)


def restore_checkpoint(out: Path, load_weights: Callable[[Path], None], optimizer, scheduler) -> int:
    """Load the latest complete checkpoint in ``out``, if any (``load_weights(folder)`` puts the
    drafter's weights back); the step to continue from."""
    checkpoint = latest_checkpoint(out)
    if checkpoint is None:
        return 0
    load_weights(checkpoint)
    state = load_trainer_state(checkpoint / "trainer.pt")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["step"]


def latest_checkpoint(out: Path) -> Path | None:
    complete = [p for p in sorted(out.glob("checkpoint-*")) if (p / "trainer.pt").is_file()]
    return complete[-1] if complete else None


def load_trainer_state(path: Path) -> dict:
    """Optimizer, scheduler and step of a checkpoint. Only tensors and plain containers
    load (``weights_only``): a pickle that would run code is refused."""
    try:
        return load_plain(path)
    except ValueError as error:
        raise ValueError(f"refusing to resume: {error}; delete that checkpoint folder to resume from an earlier "
                         "one") from None


def check_run_folder(cfg, out: Path, resumable_changes: tuple[str, ...]) -> None:
    """Refuse a run folder that is a file, or that holds a run of ``cfg``'s dataclass made
    with other settings (except ``resumable_changes``)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a run folder")
    if latest_checkpoint(out) is not None:
        check_same_settings(out / "config.json", asdict(cfg), resumable_changes)
