"""Draft sources behind one interface: each proposes branches (token rows of any length after
the committed sequence) with, per token, a calibration key and a prior acceptance estimate.

- ``LookupSource``: the committed sequence (prompt and text so far) or a ``SuffixIndex``
  (earlier outputs, a datastore) searched for the longest suffix match; every match's
  continuation, merged with counts. Deterministic: the tokens follow from the committed ones
  alone (their draft distribution is one-hot).
- ``ModelSource``: a ``Drafter`` (the diffusion drafter, or any other); its rows carry the
  distributions they were drawn from, and its signal is the drafter's own per-slot
  confidence (the largest probability of the slot's distribution, which does not depend on
  the token drawn, so a policy that reads it keeps rejection sampling exact).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from specdiff.drafter import Accepted, Drafter
from specdiff.sampling import SamplingConfig
from specdiff.tree.matching import longest_suffix_matches, merge_continuations
from specdiff.tree.suffix_index import SuffixIndex


@dataclass(frozen=True)
class Branch:
    source: str
    tokens: list[int]
    keys: list[tuple]  # per token: what its acceptance is calibrated by
    priors: list[float]  # per token: estimated P(accepted | its parent accepted) before calibration
    draft_probs: Tensor | None = None  # [len(tokens), vocab]; None: deterministic (one-hot)


def depth_bucket(depth: int) -> int:
    return min(depth, 4)


def match_bucket(ngram: int) -> int:
    """Calibration bucket of a lookup match's length: 1, 2, 3, 4, then 5-7, 8-15 and 16 or more
    (long matches are copies under way, whose drafts land far more often)."""
    return ngram if ngram <= 4 else 5 if ngram < 8 else 8 if ngram < 16 else 16


def model_prior(depth: int) -> float:
    """A drafter's acceptance at a draft depth before anything is learnt or signalled."""
    return 0.5 ** (depth + 1)


def lookup_branches(source: str, ngram: int, continuations: list[list[int]], max_branches: int) -> list[Branch]:
    """Branches from the continuations of ``ngram``-token matches. Prior: a longer match and a
    larger share of agreeing matches are likelier to be accepted."""
    branches = []
    for merged in merge_continuations(continuations, max_branches):
        keys = [(source, depth_bucket(depth), match_bucket(ngram), round(share, 1))
                for depth, share in enumerate(merged.shares)]
        priors = [share * (0.35 + 0.1 * min(ngram, 4)) for share in merged.shares]
        branches.append(Branch(source, merged.tokens, keys, priors))
    return branches


class LookupSource:
    """Suffix matches in the committed sequence (``index`` None) or in a ``SuffixIndex``."""

    def __init__(self, name: str, min_ngram: int, max_ngram: int, max_branches: int, max_matches: int = 64,
                 index: SuffixIndex | None = None):
        self.name, self.min_ngram, self.max_ngram = name, min_ngram, max_ngram
        self.max_branches, self.max_matches, self.index = max_branches, max_matches, index

    def propose(self, sequence: Sequence[int], max_depth: int) -> list[Branch]:
        if self.index is None:
            tokens = np.asarray(sequence, dtype=np.int64)
            ngram, starts = longest_suffix_matches(tokens, self.min_ngram, self.max_ngram)
            continuations = [tokens[start:start + max_depth].tolist() for start in starts[:self.max_matches]]
        else:
            ngram, starts = self.index.matches(sequence, self.min_ngram, self.max_ngram)
            continuations = [self.index.continuation(int(start), max_depth) for start in starts[:self.max_matches]]
        return lookup_branches(self.name, ngram, [c for c in continuations if c], self.max_branches)


class ModelSource:
    """A drafter as a source. It must hear of every committed token even on steps it did
    not draft, so ``update`` is always called.

    ``seconds``: what a draft call costs in the steady state, for the policy. A call after
    steps the drafter sat out first runs the drafter over everything committed since (a
    catch-up paid once, whenever the drafter is used again); such calls are timed but left
    out of the estimate, or one long catch-up (the prompt, a stretch of lookup-only steps)
    would price the drafter out of every later step."""

    name = "diffusion"

    def __init__(self, drafter: Drafter, steady_tokens: int):
        self.drafter = drafter
        self.steady_tokens = steady_tokens  # at most what one step commits: a call catching up on no more is steady
        self.seconds: float | None = None  # moving average of steady draft calls
        self._seen = 0  # committed tokens the drafter had run over at its last call

    def start(self, prompt: list[int], features: Tensor | None = None) -> None:
        self.drafter.start(prompt, features)
        self._seen = 0

    def propose(self, committed: int, gamma: int, sampling: SamplingConfig, num_drafts: int,
                generator: torch.Generator | None, greedy_first: bool) -> list[Branch]:
        """``committed``: tokens in the sequence now (what the drafter catches up on)."""
        started = time.perf_counter()
        draft = self.drafter.draft(gamma, sampling, num_drafts, generator, greedy_first=greedy_first)
        elapsed = time.perf_counter() - started
        if committed - self._seen <= self.steady_tokens:
            self.seconds = elapsed if self.seconds is None else 0.8 * self.seconds + 0.2 * elapsed
        self._seen = committed
        if draft.confidence is None:  # no signal of its own: calibrated by depth alone
            keys = [(self.name, depth_bucket(j), None) for j in range(gamma)]
            priors = [model_prior(j) for j in range(gamma)]
        else:
            keys = [(self.name, depth_bucket(j), round(float(c), 1)) for j, c in enumerate(draft.confidence)]
            priors = draft.confidence.tolist()
        return [Branch(self.name, draft.tokens[row].tolist(), keys, priors, draft.draft_probs[row])
                for row in range(draft.tokens.shape[0])]

    def update(self, accepted: Accepted) -> None:
        self.drafter.update(accepted)
