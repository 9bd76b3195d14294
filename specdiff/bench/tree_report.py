"""What the tree policy did in a bench run, from its records: acceptance by source and depth,
where accepted tokens came from, which plans it chose, and verify seconds by tree size.
Pure functions over record dicts."""

from __future__ import annotations

from collections import Counter, defaultdict


def step_commits(record: dict) -> list[list[int]]:
    """The tokens each verifier call committed, cut from the output by the accepted lengths."""
    commits, offset = [], 0
    for length in record["accepted_lengths"]:
        commits.append(record["token_ids"][offset:offset + length])
        offset += length
    return commits


def tree_statistics(records: list[dict]) -> dict[str, dict]:
    """{method: statistics} for the methods whose records hold tree plans."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        if any(record.get("plans") or []):
            by_method[record["method"]].append(record)
    return {method: _statistics(rows) for method, rows in by_method.items()}


def _statistics(rows: list[dict]) -> dict:
    reached: Counter = Counter()
    accepted: Counter = Counter()
    tokens_by_source: Counter = Counter()
    choices: Counter = Counter()
    verify_by_nodes: dict[int, list[float]] = defaultdict(list)
    calls = tokens = 0
    for record in rows:
        for plan, committed, source, nodes, seconds in zip(record["plans"], step_commits(record), record["sources"],
                                                           record["nodes"], record["step_verify_seconds"]):
            calls, tokens = calls + 1, tokens + len(committed)
            verify_by_nodes[nodes].append(seconds)
            tokens_by_source[source or "verifier only"] += len(committed) - 1
            if plan is None:  # the last token of a generation: no draft
                continue
            choices[plan["choice"]] += 1
            for branch in plan["branches"]:
                for depth, token in enumerate(branch["tokens"][:len(committed)]):
                    reached[(branch["source"], depth)] += 1
                    hit = token == committed[depth]
                    accepted[(branch["source"], depth)] += hit
                    if not hit:
                        break
    acceptance: dict[str, dict[int, dict]] = defaultdict(dict)
    for (source, depth), count in sorted(reached.items()):
        acceptance[source][depth] = {"reached": count, "rate": round(accepted[(source, depth)] / count, 3)}
    return {
        "tau": tokens / calls if calls else None,
        "accepted_draft_tokens_by_source": {k: v for k, v in tokens_by_source.items() if k != "verifier only"},
        "choices": dict(choices),
        "acceptance_by_source_and_depth": dict(acceptance),
        "verify_seconds_by_nodes": {n: {"calls": len(v), "mean_s": round(sum(v) / len(v), 4)}
                                    for n, v in sorted(verify_by_nodes.items())},
    }


def tree_markdown(statistics: dict[str, dict]) -> str:
    lines = []
    for method, stats in statistics.items():
        lines.append(f"\n{method}: tau {stats['tau']:.2f}; plans {stats['choices']}; accepted draft tokens by source "
                     f"{stats['accepted_draft_tokens_by_source']}")
        for source, depths in stats["acceptance_by_source_and_depth"].items():
            cells = ", ".join(f"d{d} {v['rate']:.2f} ({v['reached']})" for d, v in list(depths.items())[:8])
            lines.append(f"- {source}: acceptance by depth (reached): {cells}")
        by_nodes = stats["verify_seconds_by_nodes"].items()
        cells = ", ".join(f"{n}: {v['mean_s']:.3f} s ({v['calls']})" for n, v in by_nodes)
        lines.append(f"- verify seconds by tokens per pass (calls): {cells}")
    return "\n".join(lines)
