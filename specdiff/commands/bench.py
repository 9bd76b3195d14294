"""``specdiff bench``."""

from __future__ import annotations

import json
from pathlib import Path

from specdiff.bench.methods import MethodSettings
from specdiff.bench.report import ENGINE_REFERENCES, check_equality, markdown_table, plot, summarize
from specdiff.bench.runner import PRESETS, QUICK_METHODS, BenchConfig, run_bench
from specdiff.bench.tree_report import tree_markdown, tree_statistics
from specdiff.config_args import add_dataclass_args, dataclass_from_args
from specdiff.serving.environment import restart_with_vllm_environment
from specdiff.tree.config import add_tree_args, tree_config_from_args


def cmd_bench(args) -> int:
    overrides = PRESETS[args.preset] if args.preset else {}
    for key, value in overrides.items():  # a preset sets defaults; explicit flags still win
        if getattr(args, key) == args.parser_defaults[key]:
            setattr(args, key, value)
    config = dataclass_from_args(BenchConfig, args, settings=dataclass_from_args(MethodSettings, args,
                                                                                    tree=tree_config_from_args(args)))
    if any(name.startswith("vllm") for name in config.methods.split(",")):
        restart_with_vllm_environment()  # vLLM's CPU settings must be in place when the process starts
    out = Path(args.out)
    run = run_bench(config, out)
    methods = [m for m in config.methods.split(",") if m]
    ran = {r["method"] for r in run.records}
    reference = next((m for m in ("ar", "ar-engine") if m in ran), None)
    summary = summarize(run.records, reference)
    sampled = config.settings.temperature > 0
    mismatches, compared = [], 0
    if not sampled:
        verifier_of = lambda method: run.models.llama_verifier if method == "llama" else run.models.verifier  # noqa: E731
        mismatches, compared = check_equality(run.records, verifier_of, run.encoded, reference)
    lines = [markdown_table(summary, run.unavailable, methods, reference or "ar"), *equality_lines(
        mismatches, compared, reference, config.settings.temperature)]
    trees = tree_statistics(run.records)
    if trees:
        lines.append(tree_markdown(trees))
    report = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(report)
    (out / "summary.json").write_text(json.dumps({"summary": summary, "unavailable": run.unavailable, "trees": trees},
                                                 indent=2))
    plot(summary, methods, out, reference or "ar")
    print(report)
    print(f"records, summary and plots in {out}")
    return 1 if any(is_failure(method, d) for method, _, d in mismatches) else 0


def is_failure(method: str, divergence) -> bool:
    """A divergence beyond the verifier's rounding, by a method that must equal its reference
    (plain decoding on another engine only differs from the torch reference by the engine)."""
    return not divergence.is_tie and method not in ENGINE_REFERENCES


def equality_lines(mismatches: list, compared: int, reference: str | None, temperature: float) -> list[str]:
    """What the equality check found, in words: every divergence with its first position and
    the verifier's top-2 margin there."""
    if temperature > 0:
        return [f"Sampling at temperature {temperature}: outputs are random draws and were NOT compared token for "
                "token (tests/test_sampling_lossless.py checks the distribution)."]
    if not compared:
        return ["No reference method (ar or ar-engine; llama for llama-*, vllm for vllm-*) in this run: outputs were "
                "NOT checked for equality."]
    if not mismatches:
        return [f"Every method's output equals {reference or 'its reference'}'s token for token (vllm-* methods: "
                "vllm's; llama-* methods: llama's)."]
    lines = [f"Outputs that differ from {reference or 'their reference'}'s (greedy; vllm-* and llama-* methods from "
             "vllm's and llama's, and those from the torch reference's only as an engine difference, not a "
             "losslessness failure):\n"]
    for method, prompt_id, d in mismatches:
        kind = "near-tie" if d.is_tie else "engine difference" if method in ENGINE_REFERENCES else "MISMATCH"
        lines.append(f"- {kind}: {method} on {prompt_id}: first divergence at new token {d.position} "
                     f"({d.reference_token} vs {d.other_token}), verifier top-2 margin {d.top2_margin:.4f} "
                     f"(ties: <= {d.tie_margin:g})")
    return lines


def register(commands) -> None:
    bench = commands.add_parser("bench", help="measure every method on the same verifier, prompts and machine")
    bench.add_argument("--out", default="runs/bench", help="output folder (reruns skip finished records)")
    bench.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help=f"quick: 3 HumanEval prompts x 64 tokens, {', '.join(QUICK_METHODS)}")
    add_dataclass_args(bench, BenchConfig, skip=("settings",))
    add_dataclass_args(bench, MethodSettings, skip=("tree",))
    add_tree_args(bench)
    bench.set_defaults(run=cmd_bench, parser_defaults={k: bench.get_default(k) for k in ("dataset", "limit",
                                                                                           "max_new_tokens", "methods")})
