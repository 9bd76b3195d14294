"""Shipped DFlash drafters: small delta files in the package, the vLLM layout in the model cache.

A trained DFlash drafter is ~54M parameters (one Qwen2.5-1.5B-sized layer and ``fc``):
too big to ship as is. Its repository form is ``dflash.json`` (the drafter's config.json,
the verifier it was trained for, which verifier layer each draft layer started from, and
the model card facts) plus ``deltas.safetensors``:

- ``<name>.delta_A`` [r, in] / ``<name>.delta_B`` [out, r] in bf16 for a weight matrix whose
  draft layer started as a copy of a verifier layer: the trained weight is the verifier's
  weight + B @ A (a rank-r truncation of what training changed);
- ``<name>.int8`` [out, in] and ``<name>.scale`` [out] (fp16) for other matrices (``fc``,
  layers trained from scratch): symmetric per-row int8, about a quarter of fp32;
- ``<name>`` in bf16 for vectors (norms, biases).

On first use the verifier's source weights are read from its prepared folder and the full
drafter is written, in the layout vLLM and ``load_dflash`` read, to
``<cache>/drafters/<name>`` (atomically, so an interrupted build is redone).
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

from specdiff.drafters.conditioned.files import MASK_EMBEDDING_FILE, check_fits, config_from_dict, load_dflash
from specdiff.machine_cache import cache_root
from specdiff.models.loading import resolve_model_folder

SHIPPED_DFLASH = {"specdiff-dflash-qwen2.5-coder-1.5b": "specdiff_dflash_qwen2.5_coder_1.5b"}
SPEC_FILE, DELTAS_FILE = "dflash.json", "deltas.safetensors"


def shipped_dflash_dir(name: str) -> Path | None:
    if name not in SHIPPED_DFLASH:
        return None
    folder = Path(str(resources.files("specdiff") / "artifacts" / SHIPPED_DFLASH[name]))
    if not (folder / SPEC_FILE).is_file():
        raise FileNotFoundError(f"the shipped drafter {name!r} is missing from this installation ({folder})")
    return folder


def source_parameter(name: str, source_layers: list[int]) -> str | None:
    """The verifier parameter a draft parameter started from: ``layers.i.X`` <- ``model.layers.<source_layers[i]>.X``."""
    parts = name.split(".")
    if parts[0] != "layers" or int(parts[1]) >= len(source_layers):
        return None
    return ".".join(["model", "layers", str(source_layers[int(parts[1])]), *parts[2:]])


def compress(state: dict[str, torch.Tensor], source: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """Deltas of ``state`` (draft parameter -> tensor) over ``source`` (draft parameter ->
    the verifier's tensor it started from): rank-``rank`` factors for 2-D weights with a
    source, per-row int8 for other 2-D weights, bf16 copies of vectors."""
    deltas = {}
    for name, tensor in state.items():
        start = source.get(name)
        if start is not None and start.shape == tensor.shape and tensor.dim() == 2 and rank < min(tensor.shape):
            u, s, vh = torch.linalg.svd((tensor.float() - start.float()), full_matrices=False)
            deltas[f"{name}.delta_B"] = (u[:, :rank] * s[:rank]).to(torch.bfloat16).contiguous()
            deltas[f"{name}.delta_A"] = vh[:rank].to(torch.bfloat16).contiguous()
        elif tensor.dim() == 2:
            scale = tensor.float().abs().amax(dim=1).clamp_min(1e-12) / 127
            deltas[f"{name}.int8"] = (tensor.float() / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
            deltas[f"{name}.scale"] = scale.to(torch.float16)
        else:
            deltas[name] = tensor.to(torch.bfloat16).contiguous()
    return deltas


def expand(deltas: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of ``compress`` (up to its truncation), in float32."""
    state = {}
    for name, tensor in deltas.items():
        if name.endswith((".delta_A", ".scale")):
            continue
        if name.endswith(".int8"):
            base = name[: -len(".int8")]
            state[base] = tensor.float() * deltas[f"{base}.scale"].float()[:, None]
        elif name.endswith(".delta_B"):
            base = name[: -len(".delta_B")]
            state[base] = source[base].float() + tensor.float() @ deltas[f"{base}.delta_A"].float()
        else:
            state[name] = tensor.float()
    return state


def write_shipped(folder: Path, network_folder: Path, verifier: str, source_layers: list[int], rank: int,
                  card: dict, max_bytes: float) -> int:
    """Compress the DFlash folder ``network_folder`` (trained from ``verifier``'s layers
    ``source_layers``; checked against the verifier first) into ``folder``; returns the
    bytes written. Everything is written beside ``folder`` and renamed into place only when
    it fits ``max_bytes``, so a refused or killed run leaves nothing that looks shipped. The
    mask embedding is written anew from its checked tensor, never copied as a file."""

    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file: give a folder")
    network = load_dflash(network_folder, AutoConfig.from_pretrained(resolve_model_folder(verifier)))
    state = {k: v for k, v in network.state_dict().items() if k != "mask_embedding"}
    source = read_source(verifier, [n for n in state if source_parameter(n, source_layers)], source_layers,
                         required=False)  # q/k norms and o_proj's bias have no source in a Qwen2 layer
    work = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        save_file(compress(state, source, rank), str(work / DELTAS_FILE))
        config = json.loads((network_folder / "config.json").read_text())
        spec = {"verifier": verifier, "source_layers": source_layers, "rank": rank, "config": config, "card": card}
        (work / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        if network.mask_embedding is not None:
            torch.save({"mask_token_id": network.mask_token_id, "embedding": network.mask_embedding.detach().clone()},
                       work / MASK_EMBEDDING_FILE)
        size = sum(p.stat().st_size for p in work.iterdir())
        if size > max_bytes:
            raise ValueError(f"the shipped form would be {size / 1e6:.1f} MB, over --max-mb {max_bytes / 1e6:g}: "
                             "lower --rank or train a smaller drafter (--intermediate-size); nothing was written")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return size


def read_source(verifier: str, names: list[str], source_layers: list[int],
                required: bool = True) -> dict[str, torch.Tensor]:
    """The verifier's tensors that draft parameters ``names`` started from, read lazily from
    its safetensors (the whole model is not loaded); with ``required`` all must exist."""

    if not names:  # a drafter trained from scratch needs nothing of the verifier's
        return {}
    folder = Path(resolve_model_folder(verifier))
    wanted = {name: source_parameter(name, source_layers) for name in names}
    found = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            keys = set(handle.keys())
            for name, key in wanted.items():
                if key in keys:
                    found[name] = handle.get_tensor(key)
    missing = sorted(set(wanted) - set(found))
    if missing and required:
        raise ValueError(f"the verifier {verifier} lacks the source weights of {missing[:3]}: is it the right model?")
    return found


def shipped_dflash_config(spec: str):
    """The config (a Qwen3Config with ``block_size``) of the shipped DFlash drafter ``spec``
    names, read from its package files without building it; None for other specs."""

    shipped = shipped_dflash_dir(spec)
    if shipped is None:
        return None
    return config_from_dict(json.loads((shipped / SPEC_FILE).read_text())["config"], str(shipped / SPEC_FILE))


def dflash_drafter_folder(spec: str, verifier_config=None) -> Path | None:
    """The vLLM-layout folder of the shipped DFlash drafter ``spec`` names (built in the
    model cache on first use), or None when ``spec`` names no shipped DFlash drafter. With
    ``verifier_config`` a drafter that does not fit that verifier is refused before
    anything is built."""

    shipped = shipped_dflash_dir(spec)
    if shipped is None:
        return None
    if verifier_config is not None:
        check_fits(shipped_dflash_config(spec), verifier_config, spec)
    return build_from_shipped(shipped, cache_root() / "drafters" / spec)


def build_from_shipped(shipped: Path, target: Path) -> Path:
    """Write the full drafter of the shipped folder ``shipped`` to ``target`` unless it is
    already there from the same files; returns ``target``."""
    stamp = [(shipped / DELTAS_FILE).stat().st_size, (shipped / SPEC_FILE).read_text()]
    built_from = target / "built-from.json"
    if built_from.is_file() and json.loads(built_from.read_text()) == stamp:
        return target
    spec_data = json.loads(stamp[1])
    deltas = load_file(str(shipped / DELTAS_FILE))
    names = sorted({n.removesuffix(".delta_A").removesuffix(".delta_B") for n in deltas if ".delta_" in n})
    source = read_source(spec_data["verifier"], names, spec_data["source_layers"])
    work = target.parent / f".{target.name}.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in expand(deltas, source).items()}, str(work / "model.safetensors"))
    (work / "config.json").write_text(json.dumps(spec_data["config"], indent=2) + "\n")
    if (shipped / "mask_embedding.pt").is_file():
        shutil.copy(shipped / "mask_embedding.pt", work / "mask_embedding.pt")
    (work / "built-from.json").write_text(json.dumps(stamp) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(work, target)
    return target
