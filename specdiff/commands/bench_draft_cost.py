"""``specdiff bench-draft-cost``: one DFlash draft call against a one-token verifier pass."""

from __future__ import annotations

from specdiff.bench.draft_cost import markdown, measure_draft_cost
from specdiff.bench.runner import BenchConfig
from specdiff.bench.saving import save_result


def cmd_draft_cost(args) -> int:
    layers = [int(x) for x in args.layers.split(",")]
    gammas = [int(x) for x in args.gammas.split(",")]
    if args.repeats < 1 or min(layers) < 1 or min(gammas) < 1:
        raise ValueError("--repeats, --layers and --gammas must be >= 1")
    result = measure_draft_cost(args.verifier, layers, gammas, args.repeats)
    save_result(args.out, "draft_cost", result, markdown(result))
    return 0


def register(commands) -> None:
    cost = commands.add_parser("bench-draft-cost", help="cost of one DFlash draft call vs a one-token verifier pass")
    cost.add_argument("--verifier", default=BenchConfig.verifier)
    cost.add_argument("--layers", default="1,2,3", help="comma-separated draft layer counts")
    cost.add_argument("--gammas", default="4,8,16", help="comma-separated draft lengths")
    cost.add_argument("--repeats", type=int, default=10)
    cost.add_argument("--out", default="runs/draft-cost")
    cost.set_defaults(run=cmd_draft_cost)
