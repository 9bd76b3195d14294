"""``specdiff bench-verify-cost``: what a verification pass costs on this machine, by kernel."""

from __future__ import annotations

from specdiff.bench.runner import BenchConfig
from specdiff.bench.saving import save_result
from specdiff.bench.verify_cost import markdown, measure_verify_cost


def cmd_verify_cost(args) -> int:
    try:
        counts = [int(x) for x in args.tokens.split(",")]
    except ValueError:
        raise ValueError(f"--tokens takes comma-separated counts like 1,2,4,8,17,33, got {args.tokens!r}") from None
    if min(counts) < 1 or args.repeats < 1 or args.prefill < 2:
        raise ValueError("--tokens and --repeats must be >= 1 and --prefill >= 2")
    result = measure_verify_cost(args.verifier, sorted(set(counts)), args.repeats, args.prefill)
    save_result(args.out, "verify_cost", result, markdown(result))
    return 0


def register(commands) -> None:
    cost = commands.add_parser("bench-verify-cost",
                               help="verifier pass time at 1-33 tokens vs this machine's roofline, by kernel")
    cost.add_argument("--verifier", default=BenchConfig.verifier)
    cost.add_argument("--tokens", default="1,2,4,8,17,33", help="comma-separated token counts per pass")
    cost.add_argument("--repeats", type=int, default=5)
    cost.add_argument("--prefill", type=int, default=120, help="cached prefix length")
    cost.add_argument("--out", default="runs/verify-cost")
    cost.set_defaults(run=cmd_verify_cost)
