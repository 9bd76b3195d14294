"""``specdiff bench``."""

from __future__ import annotations

import json
from pathlib import Path

from specdiff.config_args import add_dataclass_args, dataclass_from_args
from specdiff.tree.config import add_tree_args, tree_config_from_args


def cmd_bench(args) -> int:
    from specdiff.bench.methods import MethodSettings
    from specdiff.bench.report import ENGINE_REFERENCE, check_equality, markdown_table, plot, summarize
    from specdiff.bench.runner import PRESETS, BenchConfig, run_bench
    from specdiff.bench.tree_report import tree_markdown, tree_statistics

    overrides = PRESETS[args.preset] if args.preset else {}
    for key, value in overrides.items():  # a preset sets defaults; explicit flags still win
        if getattr(args, key) == args.parser_defaults[key]:
            setattr(args, key, value)
    config = dataclass_from_args(BenchConfig, args, settings=dataclass_from_args(MethodSettings, args,
                                                                                    tree=tree_config_from_args(args)))
    if any(name.startswith("vllm") for name in config.methods.split(",")):
        from specdiff.serving.environment import restart_with_vllm_environment

        restart_with_vllm_environment()  # vLLM's CPU settings must be in place when the process starts
    out = Path(args.out)
    records, unavailable, model, encoded = run_bench(config, out)
    methods = [m for m in config.methods.split(",") if m]
    ran = {r["method"] for r in records}
    reference = next((m for m in ("ar", "ar-engine") if m in ran), None)
    summary = summarize(records, reference or "ar")
    sampled = config.settings.temperature > 0
    mismatches = check_equality(records, model, encoded, reference) if reference and not sampled else []
    table = markdown_table(summary, unavailable, methods, reference or "ar")
    lines = [table]
    if sampled:
        lines.append(f"Sampling at temperature {config.settings.temperature}: outputs are random draws and were NOT "
                     "compared token for token (tests/test_sampling_lossless.py checks the distribution).")
    elif reference is None:
        lines.append("No reference method (ar or ar-engine) in this run: outputs were NOT checked for equality.")
    elif mismatches:
        lines.append(f"Outputs that differ from {reference}'s (greedy; vllm-* methods from vllm's, and vllm's from "
                     f"{reference}'s only as an engine difference, not a losslessness failure):\n")
        for method, prompt_id, d in mismatches:
            kind = "near-tie" if d.is_tie else "engine difference" if method == ENGINE_REFERENCE else "MISMATCH"
            lines.append(f"- {kind}: {method} on {prompt_id}: first divergence at new token {d.position} "
                         f"({d.reference_token} vs {d.other_token}), verifier top-2 margin {d.top2_margin:.4f}")
    else:
        lines.append(f"Every method's output equals {reference}'s token for token (vllm-* methods: vllm's).")
    trees = tree_statistics(records)
    if trees:
        lines.append(tree_markdown(trees))
    report = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(report)
    (out / "summary.json").write_text(json.dumps({"summary": summary, "unavailable": unavailable, "trees": trees},
                                                 indent=2))
    plot(summary, methods, out, reference or "ar")
    print(report)
    print(f"records, summary and plots in {out}")
    return 1 if any(not d.is_tie and method != ENGINE_REFERENCE for method, _, d in mismatches) else 0


def register(commands) -> None:
    from specdiff.bench.methods import MethodSettings
    from specdiff.bench.runner import PRESETS, BenchConfig

    bench = commands.add_parser("bench", help="measure every method on the same verifier, prompts and machine")
    bench.add_argument("--out", default="runs/bench", help="output folder (reruns skip finished records)")
    bench.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help="quick: 3 HumanEval prompts x 64 tokens, about 9 minutes on a 2-core CPU (models prepared)")
    add_dataclass_args(bench, BenchConfig, skip=("settings",))
    add_dataclass_args(bench, MethodSettings, skip=("tree",))
    add_tree_args(bench)
    bench.set_defaults(run=cmd_bench, parser_defaults={k: bench.get_default(k) for k in ("dataset", "limit",
                                                                                           "max_new_tokens")})
