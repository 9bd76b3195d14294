"""The ``specdiff`` command: the parser of every sub-command and one-line errors. Thin over the library."""

from __future__ import annotations

import argparse
import sys

from specdiff.commands import (
    bench,
    bench_draft_cost,
    bench_serve,
    bench_verify_cost,
    calibrate,
    generate,
    models,
    serve,
)
from specdiff.linear_kernels import kernel_mode
from specdiff.models.prepare import ModelUnavailableError
from specdiff.serving.environment import VllmUnavailableError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specdiff", description="Lossless speculative decoding with diffusion drafters")
    commands = parser.add_subparsers(dest="command", required=True)
    for register in _commands():
        register(commands)
    return parser


def _commands():
    """Every sub-command's ``register``, one file each in ``specdiff/commands/``."""
    return [generate.register, models.register, calibrate.register, bench.register, bench_draft_cost.register,
            bench_verify_cost.register, serve.register, bench_serve.register]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        kernel_mode()  # a bad SPECDIFF_KERNELS is refused before any model loads
        return args.run(args)
    except (ValueError, ModelUnavailableError, FileNotFoundError, VllmUnavailableError) as error:
        print(f"specdiff: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("specdiff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
