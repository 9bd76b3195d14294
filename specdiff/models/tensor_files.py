"""Reading ``torch.save`` files that must hold tensors and plain data only."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch


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
