"""Price the tree policy offline along a verifier's greedy trajectories.

Greedy speculative output is the verifier's greedy trajectory, so the tree's steps can be
replayed against trajectories computed once (``calibrate eval``'s ``TrajectoryVerifier``) and
each step priced by a verify-cost curve: the pass of ``nodes`` tokens from the table, plus the
tree's own drafting time as measured here. Plain decoding costs one one-token pass per token.
The ratio estimates what the tree gains on a backend with that curve, for policy variants,
without running the verifier: a development tool, never a speed claim (those come from
``specdiff bench``). Tune on training data only (GSM8K-train), never on evaluation sets.

    python scripts/tree_policy_replay.py --trajectories runs/policy-replay/trajectories-llama-cpp.jsonl \
        --costs 1:90,2:132,3:160,4:189,6:256,8:330,12:295,16:303,24:436

Trajectories: ``specdiff calibrate eval --backend llama-cpp --dataset gsm8k ...`` (GSM8K-train)
or ``scripts/training_trajectories.py`` (code and passage instructions from the standard library).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from specdiff.calibrate.evaluate import TrajectoryVerifier, load_trajectories
from specdiff.engine import DecodingConfig, stream_generate
from specdiff.tree.build import build_tree_drafter
from specdiff.tree.config import TreeConfig
from specdiff.tree.costs import VerifyCosts


class FrozenCosts(VerifyCosts):
    """A cost table the replay's (near-zero) pass times must not overwrite."""

    def record(self, tokens: int, seconds: float, weight: float = 0.1) -> None:
        pass


def parse_costs(text: str) -> dict[int, float]:
    return {int(size): float(ms) / 1000 for size, ms in (item.split(":") for item in text.split(","))}


def replay_tree(rows: list[dict], config: TreeConfig, costs: dict[int, float], vocab_size: int) -> dict:
    """Priced replay of one tree (estimates and suffix index carried across rows, as in a bench run)."""
    frozen = FrozenCosts(costs)
    stand_in = TrajectoryVerifier([0], [0], vocab_size)  # build_tree_drafter reads only its vocabulary size
    tree = build_tree_drafter(config, stand_in, None, costs=frozen)
    totals = {"tokens": 0, "steps": 0, "drafted_steps": 0, "wasted_steps": 0, "priced_s": 0.0, "draft_s": 0.0}
    calibration: dict[float, list[float]] = {}  # expected extra tokens (0.25 bins) -> [steps, expected, accepted]
    for row in rows:
        verifier = TrajectoryVerifier(row["prompt_ids"], row["trajectory"], vocab_size)
        decoding = DecodingConfig(max_new_tokens=len(row["trajectory"]))
        for step in stream_generate(torch.tensor([row["prompt_ids"]]), verifier, tree, decoding):
            totals["tokens"] += len(step.new_tokens)
            totals["steps"] += 1
            totals["drafted_steps"] += step.nodes > 1
            totals["wasted_steps"] += step.nodes > 1 and step.accepted == 0
            totals["priced_s"] += frozen.seconds(step.nodes) + step.draft_seconds
            totals["draft_s"] += step.draft_seconds
            if step.nodes > 1:
                extra = step.plan["expected_tokens"] - 1
                row = calibration.setdefault(min(2.0, extra // 0.25 * 0.25), [0, 0.0, 0])
                row[0], row[1], row[2] = row[0] + 1, row[1] + extra, row[2] + step.accepted
    plain_s = totals["tokens"] * frozen.seconds(1)
    return {**totals, "speedup": plain_s / totals["priced_s"], "tau": totals["tokens"] / totals["steps"],
            "acceptance": tree.estimates.table(),
            "calibration": {f"{low:.2f}": f"{n} steps: expected {e / n:.2f}, accepted {a / n:.2f}"
                            for low, (n, e, a) in sorted(calibration.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trajectories", required=True, help="a calibrate eval trajectories*.jsonl")
    parser.add_argument("--costs", required=True, help="size:milliseconds,... the backend's verify-cost curve")
    parser.add_argument("--sources", default="lookup,suffix")
    parser.add_argument("--tree", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="other TreeConfig fields, e.g. max_depth=24 max_nodes=32")
    parser.add_argument("--vocab-size", type=int, default=151936)
    args = parser.parse_args()
    rows = list(load_trajectories(Path(args.trajectories)).values())
    fields = {name: int(value) for name, value in (item.split("=") for item in args.tree)}
    result = replay_tree(rows, TreeConfig(sources=args.sources, **fields), parse_costs(args.costs), args.vocab_size)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
