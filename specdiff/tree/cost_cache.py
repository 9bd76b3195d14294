"""Verify-cost tables kept per machine, backend and model shape (``verify_costs.json`` in
specdiff's cache folder), so a run starts from this machine's curve without re-measuring it;
the table a run uses is still kept current from every pass it times (``VerifyCosts.record``).
Delete the file to measure again."""

from __future__ import annotations

import sys

from specdiff.machine_cache import cache_root, cpu_name, read_entries, store_entry
from specdiff.tree.costs import VerifyCosts, measure_verify_costs

COSTS_FILE = "verify_costs.json"


def cached_verify_costs(verifier) -> VerifyCosts:
    """``verifier``'s table on this machine: stored, else measured now and stored. The key
    is the CPU and the verifier's ``cost_identity`` (backend, model shape, threads)."""
    path = cache_root() / COSTS_FILE
    key = f"{cpu_name()} | {verifier.cost_identity}"
    stored = read_entries(path).get(key)
    try:
        costs, origin = VerifyCosts({int(size): float(seconds) for size, seconds in stored.items()}), f"cached in {path}"
    except (AttributeError, TypeError, ValueError):  # absent or not a table we wrote
        costs, origin = measure_verify_costs(verifier, verifier.vocab_size), "measured now"
        store_entry(path, key, {str(size): seconds for size, seconds in costs.table.items()})
    print("verify cost (tokens: ms): " + ", ".join(f"{n}: {s * 1000:.0f}" for n, s in costs.table.items())
          + f" ({origin})", file=sys.stderr)
    return costs
