"""Exact sequence distributions of a tiny verifier, and the distance of samples from them."""

from __future__ import annotations

import math
from collections import Counter

import torch

from specdiff.sampling import SamplingConfig, logits_to_probs


@torch.no_grad()
def sequence_distribution(model, prompt: list[int], max_new_tokens: int, sampling: SamplingConfig,
                          eos_token_id: int) -> dict[tuple[int, ...], float]:
    """P(continuation) for every continuation the verifier can produce, stopping at EOS."""
    vocab = model.config.vocab_size
    result: dict[tuple[int, ...], float] = {}
    frontier = {(): 1.0}
    for _ in range(max_new_tokens):
        next_frontier = {}
        for seq, mass in frontier.items():
            logits = model(torch.tensor([prompt + list(seq)])).logits[0, -1]
            probs = logits_to_probs(logits, sampling)
            for token in range(vocab):
                if probs[token] == 0:
                    continue
                extended = seq + (token,)
                target = result if token == eos_token_id else next_frontier
                target[extended] = target.get(extended, 0.0) + mass * float(probs[token])
        frontier = next_frontier
    result.update(frontier)
    return result


def total_variation(exact: dict, samples: list[tuple[int, ...]]) -> float:
    counts = Counter(samples)
    keys = set(exact) | set(counts)
    return 0.5 * sum(abs(exact.get(k, 0.0) - counts.get(k, 0) / len(samples)) for k in keys)


def expected_sampling_tv(exact: dict, num_samples: int) -> float:
    """Approximate E[TV] between ``exact`` and an honest empirical sample of that size."""
    return 0.5 * sum(math.sqrt(2 * p * (1 - p) / (math.pi * num_samples)) for p in exact.values())


def distribution_tv(first: dict, second: dict) -> float:
    return 0.5 * sum(abs(first.get(k, 0.0) - second.get(k, 0.0)) for k in set(first) | set(second))
