"""Load causal LMs and tokenizers by name (packaged models), local folder or Hub id."""

from __future__ import annotations

import functools
import pickle
import socket
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import torch
from huggingface_hub import constants, try_to_load_from_cache
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from specdiff.linear_kernels import plan_kernels, use_fast_linear
from specdiff.models.prepare import ModelUnavailableError, is_prepared, prepare, prepared_dir
from specdiff.models.registry import PACKAGED_MODELS
from specdiff.prompting import eos_token_ids

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_folder(spec: str, other_names: tuple[str, ...] = ()) -> str:
    """A folder or Hub id transformers can load: packaged models are prepared on first use.
    A spec that is none of these fails at once when the Hub cannot be reached (transformers
    would retry for most of a minute); ``other_names`` are listed beside the named models."""
    if spec in PACKAGED_MODELS:
        if not is_prepared(PACKAGED_MODELS[spec]):
            print(f"preparing {spec} once (specdiff models prepare {spec}) ...", file=sys.stderr)
        return str(prepare(spec))
    if Path(spec).expanduser().exists():
        return str(Path(spec).expanduser())
    if _in_hub_cache(spec):
        return spec
    known = ", ".join((*PACKAGED_MODELS, *other_names))
    if spec.count("/") > 1 or spec.startswith((".", "/", "~")):
        raise ModelUnavailableError(f"no such folder: {spec} (named models: {known})")
    if not hub_reachable():
        raise ModelUnavailableError(
            f"{spec!r} is not a named model, not a local folder, and the Hugging Face Hub cannot be reached "
            f"to look it up; named models: {known}"
        )
    return spec


def _in_hub_cache(repo_id: str) -> bool:
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's endpoint opens (False when HF_HUB_OFFLINE is set)."""

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def load_tokenizer(spec: str, other_names: tuple[str, ...] = ()):
    folder = resolve_model_folder(spec, other_names)
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise ModelUnavailableError(_not_loadable(spec, error)) from None


def load_causal_lm(spec: str, dtype: str = "float32", other_names: tuple[str, ...] = ()):
    """(model, tokenizer) for a named model, a local folder or a Hub id. fp32 by default:
    on AVX2 CPUs bf16 is emulated and makes multi-token verification about 3x slower.
    Linear layers are swapped for :class:`FastLinear` (the fastest kernel this machine has for 1-64 rows)."""

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    folder = resolve_model_folder(spec, other_names)
    tokenizer = load_tokenizer(spec, other_names)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype], attn_implementation="sdpa")
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: never
        raise ModelUnavailableError(f"cannot load model from {spec}: its pickled weights hold Python objects beyond "
                                    "tensors, which specdiff never unpickles (give safetensors weights)") from None
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise ModelUnavailableError(_not_loadable(spec, error)) from None
    use_fast_linear(model).eval()
    plan_kernels(model)  # measured once per machine and shape (cached); never inside a timed pass
    return model, tokenizer


@functools.cache
def _not_loadable(spec: str, error: Exception) -> str:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if spec in PACKAGED_MODELS:
        return (f"the prepared copy of {spec} in {prepared_dir(PACKAGED_MODELS[spec])} is damaged ({first_line}): "
                f"rebuild it with `specdiff models prepare {spec} --force`")
    if Path(spec).exists():
        return f"cannot load model from {spec}: {first_line} (is the folder complete and uncorrupted?)"
    return (
        f"cannot load model {spec!r}: not a named model (see `specdiff models list`), not a local folder, "
        f"and not loadable as a Hugging Face Hub id ({first_line})"
    )


def real_vocabulary(tokenizer) -> dict[str, int]:
    """token -> id, without placeholders for unused ids (``[PAD151666]``: how a tokenizer
    converted from GGUF names the embedding rows past its vocabulary)."""
    return {token: index for token, index in tokenizer.get_vocab().items() if token != f"[PAD{index}]"}


def check_same_tokenizer(verifier_tokenizer, drafter_tokenizer) -> None:
    """Every verifier token must have the same id in the drafter's tokenizer (a drafter may
    add tokens of its own, as Dream adds its mask token)."""
    drafter_vocab = drafter_tokenizer.get_vocab()
    if any(drafter_vocab.get(token) != index for token, index in real_vocabulary(verifier_tokenizer).items()):
        raise ValueError(
            "the drafter's tokenizer differs from the verifier's: speculative decoding needs a drafter "
            "that shares the verifier's tokenizer (e.g. qwen2.5-coder-0.5b-instruct for qwen2.5-coder-1.5b-instruct)"
        )


def verifier_eos_ids(spec: str, tokenizer) -> set[int]:
    """Every id that ends a verifier's answer, as ``load_causal_lm``'s model would say, read
    from its local folder without loading (or preparing) weights: the tokenizer's EOS and the
    generation config's (the model config's where the folder has none). Without a local folder
    (a ``.gguf`` file, a named model not prepared, a Hub id): the tokenizer's only."""
    if spec in PACKAGED_MODELS:
        folder = prepared_dir(PACKAGED_MODELS[spec]) if is_prepared(PACKAGED_MODELS[spec]) else None
    else:
        folder = Path(spec).expanduser() if Path(spec).expanduser().is_dir() else None
    config = None
    if folder is not None:
        try:
            config = GenerationConfig.from_pretrained(folder)
        except OSError:  # no generation_config.json
            config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(folder))
    return eos_token_ids(SimpleNamespace(generation_config=config), tokenizer)
