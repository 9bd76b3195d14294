"""Greedy trajectories of training prompts (code and passage instructions cut from the Python
standard library, ``specdiff.calibrate.prompts``), for pricing tree policies offline with
``scripts/tree_policy_replay.py``. Never evaluation sets: those are for measuring only.

    python scripts/training_trajectories.py --backend llama-cpp --per-kind 16 \\
        --out runs/policy-replay-mixed/trajectories-llama-cpp.jsonl

Resumes: finished prompts are kept in ``--out`` and skipped on a rerun.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from specdiff.bench.datasets import BenchPrompt
from specdiff.calibrate.evaluate import verifier_trajectories
from specdiff.calibrate.prompts import code_prompts, passage_prompts
from specdiff.verifiers.backends import BACKENDS


def training_prompts(per_kind: int, seed: int = 0) -> list[BenchPrompt]:
    """``per_kind`` code prompts and as many passage instructions, alternating."""
    rng = random.Random(seed)
    code, passages = code_prompts(), passage_prompts(seed=seed)
    rng.shuffle(code)
    rng.shuffle(passages)
    pairs = zip(code[:per_kind], passages[:per_kind])
    return [prompt for i, (c, p) in enumerate(pairs)
            for prompt in (BenchPrompt(f"code-{i}", "code", (c,)), BenchPrompt(f"passage-{i}", "passage", (p,)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verifier", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--backend", default="llama-cpp", choices=[b for b in BACKENDS if b != "auto"])
    parser.add_argument("--per-kind", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    verifier_trajectories(training_prompts(args.per_kind), args.verifier, args.max_new_tokens, args.out, args.backend)


if __name__ == "__main__":
    main()
