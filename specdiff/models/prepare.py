"""Prepare a packaged model once: find its parts, verify the assembled GGUF's sha256,
convert it to safetensors plus tokenizer in the cache, and load from there afterwards.

A cache entry appears under its final name only by an atomic rename after everything
is written, so an interrupted preparation never leaves an entry that would be used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from specdiff.machine_cache import cache_root
from specdiff.models.registry import PACKAGED_MODELS, PackagedModel

CHUNK = 16 << 20


class ModelUnavailableError(RuntimeError):
    """A model cannot be found, prepared or loaded; the message says what to do."""


def prepared_dir(model: PackagedModel) -> Path:
    return cache_root() / "models" / model.name


def is_prepared(model: PackagedModel) -> bool:
    return (prepared_dir(model) / "config.json").is_file()


def is_installed(model: PackagedModel) -> bool:
    return all(importlib.util.find_spec(module) is not None for module, _ in model.parts)


def find_parts(model: PackagedModel) -> list[Path]:
    """Paths of the model's part files inside their installed packages, in order."""
    paths = []
    for module, relative in model.parts:
        spec = importlib.util.find_spec(module)  # never import: some packages import heavy deps
        if spec is None or not spec.submodule_search_locations:
            raise ModelUnavailableError(
                f"model {model.name!r} is not installed (package for {module!r} missing). Install it with:\n"
                f"  {model.pip_command}\n  or: pip install 'specdiff[models]'"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / relative
        if not path.is_file():
            raise ModelUnavailableError(f"{path} is missing: reinstall with\n  {model.pip_command} --force-reinstall")
        paths.append(path)
    return paths


def assemble_and_verify(model: PackagedModel, parts: list[Path], destination: Path | None) -> None:
    """Concatenate ``parts`` into ``destination`` (None: only hash them) and check size and sha256."""
    digest = hashlib.sha256()
    size = 0
    out = open(destination, "wb") if destination else None
    try:
        with tqdm(total=model.size, unit="B", unit_scale=True, desc=f"verify {model.name}", file=sys.stderr) as bar:
            for part in parts:
                with open(part, "rb") as handle:
                    while chunk := handle.read(CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        bar.update(len(chunk))
                        if out:
                            out.write(chunk)
    finally:
        if out:
            out.close()
    if size != model.size or digest.hexdigest() != model.sha256:
        raise ModelUnavailableError(
            f"model {model.name!r} failed its checksum (got {size:,} bytes, sha256 {digest.hexdigest()[:16]}..., "
            f"expected {model.size:,} bytes, {model.sha256[:16]}...): a part is truncated or corrupted. "
            f"Reinstall it:\n  {model.pip_command} --force-reinstall"
        )


def gguf_file(name: str) -> Path:
    """The named model's GGUF file as shipped (no conversion): its one part where it ships as
    one file, else its parts assembled and checked once into ``<cache>/gguf/<name>.gguf``."""
    model = PACKAGED_MODELS[name]
    parts = find_parts(model)
    if len(parts) == 1:
        return parts[0]
    target = cache_root() / "gguf" / model.gguf_name
    if target.is_file() and target.stat().st_size == model.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        assemble_and_verify(model, parts, partial)
        os.replace(partial, target)  # a complete, checked file or none
    finally:
        partial.unlink(missing_ok=True)
    return target


def convert_gguf(gguf_path: Path, destination: Path) -> None:
    """Dequantise a GGUF file with transformers and save it as safetensors plus tokenizer."""

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the
    # weights are already dequantised to fp32, so the markers are cleared.
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)


def prepare(name: str, parts: list[Path] | None = None, force: bool = False) -> Path:
    """Prepare the named model (idempotent; ``force`` rebuilds it) and return its cache folder."""
    if name not in PACKAGED_MODELS:
        raise ModelUnavailableError(f"unknown model {name!r}; known: {', '.join(PACKAGED_MODELS)}")
    model = PACKAGED_MODELS[name]
    final = prepared_dir(model)
    if is_prepared(model) and not force:
        return final
    work = _claim_work_dir(final.parent, name)
    try:
        parts = parts if parts is not None else find_parts(model)
        gguf_path = work / model.gguf_name
        if len(parts) == 1:  # verify in place, no copy needed
            assemble_and_verify(model, parts, None)
            os.symlink(parts[0], gguf_path)
        else:
            assemble_and_verify(model, parts, gguf_path)
        print(f"converting {name} to safetensors (about a minute for the 1.5B) ...", file=sys.stderr)
        convert_gguf(gguf_path, work / "model")
        gguf_path.unlink()
        if final.exists():  # a damaged entry (--force) or one from an older layout
            shutil.rmtree(final)
        os.replace(work / "model", final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _claim_work_dir(parent: Path, name: str) -> Path:
    """A fresh temporary folder ``.<name>.<pid>.<random>`` beside the cache entries, after
    removing this model's folders left by preparations that were killed (their process is
    gone). Other models' folders and those of live processes are left alone."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for stale in parent.glob(f".{name}.*"):
            if stale.is_dir() and not _process_alive(stale.name[len(name) + 2:].split(".")[0]):
                print(f"removing {stale} (left by an interrupted preparation)", file=sys.stderr)
                shutil.rmtree(stale, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", dir=parent))
    except OSError as error:
        raise ModelUnavailableError(
            f"cannot write the model cache {parent} ({error.strerror or error}): "
            "set SPECDIFF_CACHE to a writable folder"
        ) from None


def _process_alive(pid_text: str) -> bool:
    if not pid_text.isdigit():
        return False  # not named by this scheme: left by an older version
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True
