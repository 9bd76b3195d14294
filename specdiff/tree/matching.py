"""Where the end of the committed sequence occurred before, and what followed: pure functions
on token arrays, no model calls.

``longest_suffix_matches`` finds, in one token sequence, the longest n-gram (n from
``max_ngram`` down to ``min_ngram``) that ends the sequence and also occurs earlier, and
returns every earlier occurrence, not only the first. vLLM's n-gram proposer takes the
earliest occurrence of the same longest n-gram, so its proposal is the continuation of our
first match. ``merge_continuations`` folds the continuations of all matches into branches with
counts: the share of matches that agree on each token is the signal a tree policy calibrates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def longest_suffix_matches(tokens: np.ndarray, min_ngram: int, max_ngram: int) -> tuple[int, np.ndarray]:
    """(n, starts): the largest n in [min_ngram, max_ngram] for which ``tokens[-n:]`` occurs
    earlier in ``tokens`` (overlaps allowed, the suffix itself excluded), and the positions
    right after each earlier occurrence, earliest first. (0, empty) when nothing matches.

    One pass per suffix token over the surviving candidates only (the earlier positions of the
    last token), so a long ``max_ngram`` costs little where matches are short."""
    length = len(tokens)
    if length < 2:
        return 0, np.zeros(0, dtype=np.int64)
    ends = np.flatnonzero(tokens[:length - 1] == tokens[length - 1])  # where an occurrence could end
    matched = np.ones(len(ends), dtype=np.int64)  # suffix tokens each candidate agrees with so far
    alive = ends
    for back in range(1, min(max_ngram, length - 1)):
        alive = alive[alive - back >= 0]
        alive = alive[tokens[alive - back] == tokens[length - 1 - back]]
        if not len(alive):
            break
        matched[np.searchsorted(ends, alive)] += 1
    longest = int(matched.max(initial=0))  # at most max_ngram: the loop stops there
    if longest < max(min_ngram, 1):
        return 0, np.zeros(0, dtype=np.int64)
    return longest, ends[matched == longest] + 1


@dataclass(frozen=True)
class Continuation:
    """One branch of merged continuations: its tokens and, per token, the share of the
    matches reaching its parent that continue with it."""

    tokens: list[int]
    shares: list[float]
    count: int  # matches that follow the whole branch


def merge_continuations(continuations: list[list[int]], max_branches: int) -> list[Continuation]:
    """Fold continuations into a count trie and return up to ``max_branches`` root-to-leaf
    branches, the most followed first (ties: the earliest continuation first, so branch 0
    of a single match is that match's continuation)."""
    root: dict = {}  # token -> [count, first index, children]
    for index, continuation in enumerate(continuations):
        node = root
        for token in continuation:
            entry = node.setdefault(token, [0, index, {}])
            entry[0] += 1
            node = entry[2]
    branches: list[Continuation] = []

    def walk(node: dict, parent_count: int, tokens: list[int], shares: list[float]) -> None:
        for token, (count, _, children) in sorted(node.items(), key=lambda item: (-item[1][0], item[1][1])):
            if len(branches) >= max_branches:
                return
            path, path_shares = tokens + [token], shares + [count / parent_count]
            if children:
                walk(children, count, path, path_shares)
            else:
                branches.append(Continuation(path, path_shares, count))

    walk(root, sum(entry[0] for entry in root.values()), [], [])
    return branches
