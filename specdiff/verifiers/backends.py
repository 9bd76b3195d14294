"""Which backend verifies a model, and opening it there: the one answer ``generate``, ``bench``,
``calibrate eval`` and the Python API ask, so that they cannot disagree and the next backend
plugs in here.

- ``transformers``: the model in PyTorch (a packaged GGUF dequantized to fp32 once, a prepared
  folder or a Hub id); runs every drafter, DFlash-layout ones (which read its hidden states)
  included.
- ``llama-cpp``: the GGUF itself through llama.cpp (``verifiers/llama_cpp.py``, the ``llama``
  extra); runs every drafter that does not read the verifier's hidden states.
- ``auto``: llama-cpp where llama-cpp-python is installed and can run what was asked (a named
  model whose GGUF is installed or a ``.gguf`` file, fp32, no DFlash-layout drafter), else
  transformers. llama.cpp is the faster verifier on every CPU measured (docs/backends.md).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from specdiff.drafters.registry import NONE, resolve
from specdiff.models.loading import load_causal_lm, verifier_eos_ids
from specdiff.models.prepare import is_installed
from specdiff.models.registry import PACKAGED_MODELS
from specdiff.prompting import eos_token_ids
from specdiff.verifier import Verifier
from specdiff.verifiers.llama_cpp import (
    open_gguf,  # imports llama.cpp itself only when a GGUF opens
)

AUTO, TRANSFORMERS, LLAMA_CPP = "auto", "transformers", "llama-cpp"
BACKENDS = (AUTO, TRANSFORMERS, LLAMA_CPP)


@dataclass
class OpenedVerifier:
    verifier: object  # Verifier (transformers) or LlamaCppVerifier: the same prefill / score / commit contract
    tokenizer: object
    eos: set[int]  # the ids that end an answer
    backend: str  # TRANSFORMERS or LLAMA_CPP

    @property
    def model(self):
        """The transformers model (None on llama.cpp): what DFlash-layout drafters read."""
        return getattr(self.verifier, "model", None)


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def runs_as_gguf(spec: str) -> bool:
    """Whether ``spec`` is a GGUF llama.cpp can open: a ``.gguf`` file or an installed packaged model."""
    model = PACKAGED_MODELS.get(spec)
    return spec.endswith(".gguf") or (model is not None and is_installed(model))


def transformers_only(drafter_spec: str, dtype: str) -> str | None:
    """What in the request only the transformers backend runs, in words, or None."""
    if dtype != "float32":
        return f"run --dtype {dtype} (it computes in the GGUF's own quantized types)"
    if drafter_spec.lower() != NONE and resolve(drafter_spec).conditioned:
        return f"run {drafter_spec!r}, a DFlash-layout drafter that reads the verifier's hidden states"
    return None


def choose_backend(verifier_spec: str, backend: str = AUTO, drafter_spec: str = NONE, dtype: str = "float32") -> str:
    """TRANSFORMERS or LLAMA_CPP for ``backend`` (AUTO picks, see the module docstring); a
    request one backend cannot run is refused in one line."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    reason = transformers_only(drafter_spec, dtype)
    if backend == LLAMA_CPP and reason:
        raise ValueError(f"--backend llama-cpp cannot {reason}: use --backend transformers")
    if backend != AUTO:
        return backend
    if reason is None and llama_cpp_installed() and runs_as_gguf(verifier_spec):
        return LLAMA_CPP
    return TRANSFORMERS


def open_verifier(spec: str, backend: str = AUTO, drafter_spec: str = NONE, dtype: str = "float32",
                  threads: int | None = None) -> OpenedVerifier:
    """The verifier ``spec`` names on the backend ``choose_backend`` picks. ``threads``: llama.cpp's
    (default: the machine's cores); PyTorch keeps its own setting."""
    chosen = choose_backend(spec, backend, drafter_spec, dtype)
    if chosen == LLAMA_CPP:
        verifier, tokenizer = open_gguf(spec, threads=threads)
        return OpenedVerifier(verifier, tokenizer, verifier_eos_ids(spec, tokenizer), chosen)
    model, tokenizer = load_causal_lm(spec, dtype)
    return OpenedVerifier(Verifier(model), tokenizer, eos_token_ids(model, tokenizer), chosen)
