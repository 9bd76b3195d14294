"""The ``specdiff`` command: the parser of every sub-command and one-line errors. Thin over the library."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specdiff", description="Lossless speculative decoding with diffusion drafters")
    commands = parser.add_subparsers(dest="command", required=True)
    for register in _commands():
        register(commands)
    return parser


def _commands():
    """Every sub-command's ``register``, each defined beside its feature."""
    from specdiff.bench.cli import register as register_bench
    from specdiff.bench.draft_cost import register as register_draft_cost
    from specdiff.bench.verify_cost import register as register_verify_cost
    from specdiff.calibrate.cli import register as register_calibrate
    from specdiff.commands.generate import register as register_generate
    from specdiff.commands.models import register as register_models
    from specdiff.serving.load_test import register as register_bench_serve
    from specdiff.serving.server import register as register_serve

    return [register_generate, register_models, register_calibrate, register_bench, register_draft_cost, register_verify_cost,
            register_serve, register_bench_serve]


def main(argv: list[str] | None = None) -> int:
    from specdiff.models.linear_kernels import kernel_mode
    from specdiff.models.prepare import ModelUnavailableError
    from specdiff.serving.environment import VllmUnavailableError

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
