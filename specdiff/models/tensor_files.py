"""Reading tensor files, each refusal one line: safetensors (which hold no code) and
``torch.save`` files that must hold tensors and plain data only."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a missing, truncated, empty or foreign file (a
    pickle under a safetensors name) is a ValueError naming the file."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise ValueError(_unreadable(path, error)) from None


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the file's header only; refusals as in :func:`load_safetensors`."""
    try:
        with safe_open(str(path), "pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError, RuntimeError) as error:
        raise ValueError(_unreadable(path, error)) from None


def _unreadable(path: str | Path, error: Exception) -> str:
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"{path}: damaged or missing weights, not a readable safetensors file ({first_line})"


def load_plain(path: str | Path):
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and containers of
    them. A file holding other Python objects (which unpickling could run as code) is
    refused with a ValueError in our words; torch's own message suggests loading it unsafely."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path}: holds Python objects beyond tensors and plain data, "
                         "which specdiff never unpickles") from None
    except (RuntimeError, OSError, EOFError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{path}: not a readable tensor file ({first_line})") from None
