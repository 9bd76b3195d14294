"""Per-node acceptance estimates, calibrated online: for each key (source, depth bucket, the
source's own signal bucket) the rate at which reached nodes were accepted, smoothed toward the
source's prior. Also a per-(source, depth) rate, for planning before a source has drafted."""

from __future__ import annotations

from collections import defaultdict


class AcceptanceEstimates:
    def __init__(self, prior_weight: float = 4.0):
        self.prior_weight = prior_weight
        self.hits: defaultdict[tuple, float] = defaultdict(float)
        self.trials: defaultdict[tuple, float] = defaultdict(float)

    def estimate(self, key: tuple, prior: float) -> float:
        """P(a node with ``key`` is accepted | its parent was), in [0, 1]."""
        weight = self.prior_weight
        return (self.hits[key] + weight * prior) / (self.trials[key] + weight)

    def depth_rate(self, source: str, depth: int, prior: float) -> float:
        return self.estimate((source, "depth", depth), prior)

    def record(self, key: tuple, depth: int, accepted: bool) -> None:
        for counted in (key, (key[0], "depth", depth)):
            self.hits[counted] += float(accepted)
            self.trials[counted] += 1.0

    def table(self) -> dict[str, dict[str, float]]:
        """{source: {"depth d": accepted / reached}} of what was observed, for reports."""
        rates: dict[str, dict[str, float]] = defaultdict(dict)
        for key, trials in sorted(self.trials.items(), key=lambda item: str(item[0])):
            if key[1] == "depth" and trials:
                rates[key[0]][f"depth {key[2]}"] = round(self.hits[key] / trials, 3)
        return dict(rates)
