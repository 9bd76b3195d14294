"""Build a drafter from a spec: a shipped or saved diffusion drafter, an untrained
diffusion drafter cut from a base model, or an autoregressive causal LM."""

from __future__ import annotations

from pathlib import Path

from specdiff.drafters import AutoregressiveDrafter, DiffusionDrafter
from specdiff.models.drafter_files import DRAFTER_CONFIG, SHIPPED_DRAFTERS, load_diffusion_lm, shipped_drafter_dir
from specdiff.models.from_causal_lm import diffusion_lm_from_causal_lm
from specdiff.models.loading import load_causal_lm, resolve_model_folder

DRAFTER_KINDS = ("auto", "ar", "diffusion")


def diffusion_folder(spec: str) -> Path | None:
    """The folder of a saved diffusion drafter named or located by ``spec``, if it is one."""
    shipped = shipped_drafter_dir(spec)
    if shipped is not None:
        return shipped
    folder = Path(spec)
    return folder if (folder / DRAFTER_CONFIG).is_file() else None


def check_drafter_spec(spec: str) -> None:
    """Fail at once (before any model loads) when ``spec`` names no drafter that can be found."""
    if diffusion_folder(spec) is None:
        resolve_model_folder(spec, other_names=(*SHIPPED_DRAFTERS, "none"))


def load_drafter(spec: str, kind: str = "auto", num_layers: int | None = None, steps: int = 1,
                 dtype: str = "float32"):
    """(drafter, tokenizer).

    kind "auto": a saved diffusion drafter if ``spec`` names one, else an autoregressive
    drafter. kind "diffusion" with a causal LM spec: an untrained (not adapted) diffusion
    drafter from its first ``num_layers`` layers (default: all)."""
    if kind not in DRAFTER_KINDS:
        raise ValueError(f"drafter kind must be one of {', '.join(DRAFTER_KINDS)}, got {kind!r}")
    folder = diffusion_folder(spec)
    if folder is not None and kind in ("auto", "diffusion"):
        network, tokenizer = load_diffusion_lm(folder, dtype)
        return DiffusionDrafter(network, steps=steps), tokenizer
    model, tokenizer = load_causal_lm(spec, dtype, other_names=(*SHIPPED_DRAFTERS, "none"))
    if kind == "diffusion":
        return DiffusionDrafter(diffusion_lm_from_causal_lm(model, num_layers), steps=steps), tokenizer
    return AutoregressiveDrafter(model), tokenizer
