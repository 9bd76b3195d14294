"""``specdiff serve``: vLLM's OpenAI-compatible server with a specdiff drafter (``serving/server.py``)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from specdiff.models.registry import DEFAULT_VERIFIER
from specdiff.serving.environment import import_vllm
from specdiff.serving.server import check_port_free, serve_command
from specdiff.serving.supervisor import GRACE_S, Stopper, supervise
from specdiff.tree.config import TreeConfig


def register(commands) -> None:
    serve = commands.add_parser("serve", help="serve the verifier with a drafter through vLLM's OpenAI API server")
    serve.add_argument("--verifier", default=DEFAULT_VERIFIER, help="named model or local folder")
    serve.add_argument("--drafter", default="none",
                       help="DFlash folder or shipped DFlash drafter, standalone diffusion drafter (name or folder), "
                            "'ngram' (vLLM's prompt lookup) or 'none' (plain decoding)")
    serve.add_argument("--gamma", type=int, default=None,
                       help="draft tokens per step (default: block size - 1 for DFlash drafters, else 4)")
    serve.add_argument("--drafter-steps", type=int, default=1, help="denoising passes (standalone diffusion drafters)")
    serve.add_argument("--sources", default=TreeConfig.sources,
                       help="standalone diffusion drafters: draft sources of the tree policy, which proposes vLLM the "
                            "chain with the most expected accepted tokens each step; 'diffusion' alone: the drafter's "
                            f"block (default: {TreeConfig.sources})")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", default=None, help="model name clients ask for (default: --verifier)")
    serve.add_argument("--max-model-len", type=int, default=4096)
    serve.add_argument("--max-num-seqs", type=int, default=16, help="most requests decoded together")
    serve.add_argument("--kv-cache-gib", type=float, default=None,
                       help="vLLM's CPU KV-cache space (VLLM_CPU_KVCACHE_SPACE; default: yours, else 4)")
    serve.add_argument("--dtype", default="float32", help="float32 on CPUs without native bf16")
    serve.add_argument("--shutdown-grace", type=float, default=GRACE_S,
                       help="seconds vLLM gets to stop on SIGTERM before its processes are killed")
    serve.add_argument("--print-command", action="store_true", help="print the vllm serve command and exit")
    serve.add_argument("vllm_args", nargs=argparse.REMAINDER, help="after --: more `vllm serve` flags")
    serve.set_defaults(run=cmd_serve)


def cmd_serve(args) -> int:
    stopper = Stopper().install()  # SIGTERM from here on: before vLLM starts, the command just ends
    argv, env = serve_command(args)
    if args.print_command:
        settings = {k: v for k, v in env.items() if os.environ.get(k) != v}
        print(" ".join([*(f"{k}={shlex.quote(v)}" for k, v in settings.items()), *map(shlex.quote, argv)]))
        return 0
    check_port_free(args.host, args.port)
    import_vllm()  # a missing or broken vLLM is reported here, in one line
    sys.stdout.flush()
    sys.stderr.flush()
    return supervise(argv, env, args.shutdown_grace, stopper=stopper)
