"""Summaries of bench records: table, equality check, plots."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from specdiff.bench.equality import Divergence, explain_divergence

# Plain decoding on another engine: its <engine>-* methods are compared with it, within the engine
# (its kernels round differently from transformers'), and it with the torch reference only as an
# engine difference, never a losslessness failure.
ENGINE_REFERENCES = ("vllm", "llama")
PLAIN_ENGINE = "ar-engine"  # plain decoding through our loop and kernels: the second baseline of every summary


def engine_of(method: str) -> str | None:
    """The engine whose plain method ``method`` is compared with (None: the torch reference)."""
    engine = method.split("-", 1)[0]
    return engine if engine in ENGINE_REFERENCES and method != engine else None


def reference_for(method: str, methods_present: set[str], reference: str | None) -> str | None:
    """The method a method's output and time are compared with."""
    engine = engine_of(method)
    if engine is not None and engine in methods_present:
        return engine
    return reference


def acceptance_by_position(records: list[dict]) -> list[float]:
    """Fraction of verifier calls that accepted draft slot j, over calls that drafted it
    (from per-call lists, or from vLLM's counters in ``spec_counts``)."""
    reached: dict[int, int] = defaultdict(int)
    accepted: dict[int, int] = defaultdict(int)
    for record in records:
        counts = record.get("spec_counts")
        if counts:
            for slot, hits in enumerate(counts["accepted_per_position"]):
                reached[slot] += counts["drafts"]
                accepted[slot] += hits
            continue
        for drafted, committed in zip(record.get("drafted") or [], record.get("accepted_lengths") or []):
            for slot in range(drafted):
                reached[slot] += 1
                accepted[slot] += slot < committed - 1
    return [accepted[j] / reached[j] if reached[j] else 0.0 for j in range(len(reached))]


def verifier_calls(record: dict) -> int | None:
    """Verifier passes a record took: per-call lists, or vLLM's drafts + the prefill pass."""
    if record.get("spec_counts"):
        return record["spec_counts"]["drafts"] + 1
    lengths = record.get("accepted_lengths")
    return len(lengths) if lengths is not None else None


def summarize(records: list[dict], reference: str = "ar") -> dict[str, dict[str, dict]]:
    """{method: {category or 'all': metrics}}."""
    by_prompt = {(r["method"], r["question_id"]): r for r in records}
    present = {r["method"] for r in records}
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for record in records:
        groups[(record["method"], record["category"])].append(record)
        groups[(record["method"], "all")].append(record)
    summary: dict[str, dict[str, dict]] = defaultdict(dict)
    for (method, category), rows in groups.items():
        tokens = sum(r["new_tokens"] for r in rows)
        seconds = sum(r["wall_time"] for r in rows)
        baseline = reference_for(method, present, reference)
        calls = [c for c in map(verifier_calls, rows) if c is not None]
        draft = sum(r["draft_seconds"] or 0 for r in rows)
        verify = sum(r["verify_seconds"] or 0 for r in rows)
        chosen = [c for r in rows for c in (r.get("candidates") or [])]
        engine_rows = len(calls) == len(rows) and sum(calls)  # per-call data for all (our engine; ar: one token each)
        timed_calls = engine_rows and all(r.get("verify_seconds") is not None for r in rows)  # a draft / verify split
        summary[method][category] = {
            "prompts": len(rows),
            "tokens_per_s": tokens / seconds if seconds else 0.0,
            "speedup": _mean_speedup(rows, by_prompt, baseline),
            "speedup_reference": baseline,
            # our own plain loop on the same kernels: what the drafter adds, kernels aside
            "speedup_vs_ar_engine": _mean_speedup(rows, by_prompt, PLAIN_ENGINE) if PLAIN_ENGINE in present else None,
            "tau": tokens / sum(calls) if engine_rows else None,
            "draft_share": draft / (draft + verify) if draft + verify else None,
            "verify_seconds_per_call": verify / sum(calls) if timed_calls else None,
            # self-selection: share of verifier calls whose accepted tokens came from a candidate other than the first
            "other_candidate_share": sum(c != 0 for c in chosen) / len(chosen) if engine_rows and chosen else None,
            "acceptance": acceptance_by_position(rows),
        }
    return summary


def _mean_speedup(rows: list[dict], by_prompt: dict, baseline: str) -> float | None:
    """Mean over prompts of the baseline's wall time over the method's."""
    ratios = [by_prompt[(baseline, r["question_id"])]["wall_time"] / r["wall_time"]
              for r in rows if (baseline, r["question_id"]) in by_prompt]
    return sum(ratios) / len(ratios) if ratios else None


def check_equality(records: list[dict], verifier_of, encoded: dict,
                   reference: str | None = "ar") -> tuple[list[tuple[str, str, Divergence]], int]:
    """(method, prompt id, divergence) for every output that differs from its reference, and
    how many outputs were compared. ``verifier_of(reference method)``: the verifier that
    scores a divergence's top-2 margin; ``encoded``: question id -> prompt token ids."""
    by_prompt = {(r["method"], r["question_id"]): r for r in records}
    present = {r["method"] for r in records}
    found, compared = [], 0
    for record in records:
        baseline = reference_for(record["method"], present, reference)
        ref = by_prompt.get((baseline, record["question_id"]))
        if ref is None or ref is record:
            continue
        compared += 1
        divergence = explain_divergence(verifier_of(baseline), encoded[record["question_id"]], ref["token_ids"],
                                        record["token_ids"])
        if divergence is not None:
            found.append((record["method"], record["question_id"], divergence))
    return found, compared


def _fmt(value, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def markdown_table(summary: dict, unavailable: dict[str, str], methods: list[str], reference: str = "ar") -> str:
    second = reference != PLAIN_ENGINE  # the speed-up over our own plain loop, beside the reference's
    lines = [f"| method | prompts | tokens/s | speed-up vs {reference} (vllm-*, llama-*: vs vllm, llama) |"
             + (f" vs {PLAIN_ENGINE} |" if second else "")
             + " tau | acc@1 | acc@2 | acc@4 | draft share | verify s/call | not 1st candidate |",
             "|---|---|---|---|" + ("---|" if second else "") + "---|---|---|---|---|---|---|"]
    for method in methods:
        if method in unavailable:
            lines.append(f"| {method} | unavailable: {unavailable[method]} |" + "|" * (9 + second) + " ")
            continue
        row = summary.get(method, {}).get("all")
        if row is None:
            continue
        acc = row["acceptance"] + [None] * 4
        lines.append(f"| {method} | {row['prompts']} | {row['tokens_per_s']:.2f} | {_fmt(row['speedup'], '{:.2f}x')} | "
                     + (f"{_fmt(row.get('speedup_vs_ar_engine'), '{:.2f}x')} | " if second else "") +
                     f"{_fmt(row['tau'], '{:.2f}')} | {_fmt(acc[0], '{:.2f}')} | {_fmt(acc[1], '{:.2f}')} | "
                     f"{_fmt(acc[3], '{:.2f}')} | {_fmt(row['draft_share'], '{:.0%}')} | "
                     f"{_fmt(row['verify_seconds_per_call'], '{:.2f}')} | {_fmt(row['other_candidate_share'], '{:.0%}')} |")
    categories = sorted({c for rows in summary.values() for c in rows if c != "all"})
    if len(categories) > 1:
        by_group = ((f"Speed-up vs {reference}", "speedup", "{:.2f}x"), ("Tokens/s", "tokens_per_s", "{:.2f}"),
                    ("tau (tokens per verifier call)", "tau", "{:.2f}"))
        for title, key, pattern in by_group:
            lines += ["", f"{title} by task group:", "",
                      "| method | " + " | ".join(categories) + " |", "|---|" + "---|" * len(categories)]
            for method in methods:
                if method in summary:
                    cells = [_fmt(summary[method].get(c, {}).get(key), pattern) for c in categories]
                    lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, methods: list[str], out: Path, reference: str = "ar") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = sorted({c for rows in summary.values() for c in rows})
    shown = [m for m in methods if m in summary]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(categories) * len(shown) / 3), 4))
    width = 0.8 / max(1, len(shown))
    for i, method in enumerate(shown):
        values = [summary[method].get(c, {}).get("speedup") or 0 for c in categories]
        ax.bar([x + i * width for x in range(len(categories))], values, width, label=method)
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xticks([x + width * (len(shown) - 1) / 2 for x in range(len(categories))], categories, rotation=20)
    ax.set_ylabel(f"speed-up over {reference} (per-prompt time ratio)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    speedup_path = out / "speedup.png"
    fig.savefig(speedup_path, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in shown:
        curve = summary[method]["all"]["acceptance"]
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=method)
    ax.set_xlabel("draft position")
    ax.set_ylabel("acceptance rate")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    acceptance_path = out / "acceptance.png"
    fig.savefig(acceptance_path, dpi=120)
    plt.close(fig)
    return [speedup_path, acceptance_path]
