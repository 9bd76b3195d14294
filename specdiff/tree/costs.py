"""What a verification pass costs on this machine, by the number of tokens it scores:
measured at start-up, then kept current from every pass the engine times."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24)


class VerifyCosts:
    """seconds(n): the cost of scoring n tokens (the root and n - 1 drafts), interpolated
    linearly between measured sizes and extrapolated from the last two."""

    def __init__(self, table: dict[int, float], prior: bool = False):
        """``prior``: a placeholder until the first observation, which then replaces it."""
        if not table or min(table) < 1 or any(seconds <= 0 for seconds in table.values()):
            raise ValueError("a verify-cost table needs positive times for sizes >= 1")
        self.table = dict(sorted(table.items()))
        self.prior = prior

    def seconds(self, tokens: int) -> float:
        sizes = list(self.table)
        times = list(self.table.values())
        if tokens <= sizes[-1] or len(sizes) == 1:
            return float(np.interp(tokens, sizes, times))
        slope = (times[-1] - times[-2]) / (sizes[-1] - sizes[-2])
        return times[-1] + max(slope, 0.0) * (tokens - sizes[-1])

    def record(self, tokens: int, seconds: float, weight: float = 0.1) -> None:
        """Fold one observed pass into the table: a moving average at sizes seen before, the
        observation itself at a new size."""
        if seconds <= 0:
            return
        if self.prior:
            self.table, self.prior = {tokens: seconds}, False
        elif tokens in self.table:
            self.table[tokens] = (1 - weight) * self.table[tokens] + weight * seconds
        else:
            self.table = dict(sorted({**self.table, tokens: seconds}.items()))


@torch.inference_mode()
def measure_verify_costs(verifier, vocab_size: int, sizes: Sequence[int] = DEFAULT_SIZES, context: int = 256,
                         repeats: int = 3, seed: int = 0) -> VerifyCosts:
    """Time ``verifier.score`` on chains of each size after a ``context``-token prefix, sizes
    interleaved ``repeats`` times; the median of each. The verifier's cache is left prefilled
    with random tokens: the next ``prefill`` replaces it."""
    generator = torch.Generator().manual_seed(seed)
    context = min(context, (verifier.max_length or context + max(sizes) + 1) - max(sizes) - 1)
    verifier.prefill(torch.randint(vocab_size, (1, context + 1), generator=generator))
    base = verifier.cached_length
    times: dict[int, list[float]] = {size: [] for size in sizes}
    verifier.score(torch.randint(vocab_size, (1, max(sizes)), generator=generator))  # warm-up
    verifier.truncate(base)
    for _ in range(repeats):
        for size in sizes:
            candidates = torch.randint(vocab_size, (1, size), generator=generator)
            started = time.perf_counter()
            verifier.score(candidates)
            times[size].append(time.perf_counter() - started)
            verifier.truncate(base)
    return VerifyCosts({size: statistics.median(values) for size, values in times.items()})
