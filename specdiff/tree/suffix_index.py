"""A compact suffix index over token documents (earlier outputs, a user's datastore).

Why written here: arctic-inference's SuffixDecoding cache (the maintained implementation)
is only a source distribution on PyPI (0.3.0), built with CMake into C++ extensions and vLLM
custom ops against torch, and a full suffix tree in Python costs hundreds of bytes per token.
This index stores the tokens (int32, documents separated by -1) and every position sorted by
the ``max_ngram`` tokens before it, read backwards (8 bytes per token): the positions that
follow any n-gram (n <= max_ngram) are then one contiguous range, found by binary search.
12 bytes per token in all; adding documents re-sorts (O(T log T)), so it suits a datastore
built once and a stream of earlier outputs.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

import numpy as np

SEPARATOR = -1


class SuffixIndex:
    def __init__(self, max_ngram: int):
        if max_ngram < 1:
            raise ValueError(f"max_ngram must be >= 1, got {max_ngram}")
        self.max_ngram = max_ngram
        self._tokens = np.full(1, SEPARATOR, dtype=np.int32)
        self._order = np.zeros(0, dtype=np.int64)
        self.documents = 0

    @property
    def num_tokens(self) -> int:
        return int((self._tokens != SEPARATOR).sum())

    @property
    def nbytes(self) -> int:
        return self._tokens.nbytes + self._order.nbytes

    def add(self, documents: Iterable[Sequence[int]]) -> None:
        """Append documents (token id lists) and re-sort the index."""
        parts = [self._tokens]
        for document in documents:
            if len(document):
                parts += [np.asarray(document, dtype=np.int32), np.full(1, SEPARATOR, dtype=np.int32)]
                self.documents += 1
        self._tokens = np.concatenate(parts)
        tokens = self._tokens
        positions = np.flatnonzero(tokens != SEPARATOR)  # where a continuation can start
        keys = [np.where(positions - back >= 0, tokens[np.maximum(positions - back, 0)], SEPARATOR)
                for back in range(1, self.max_ngram + 1)]  # the token 1, 2, ... before each position
        self._order = positions[np.lexsort(keys[::-1])]

    def _key(self, position: int, n: int) -> tuple[int, ...]:
        before = self._tokens[max(0, position - n):position][::-1].tolist()
        return tuple(before + [SEPARATOR] * (n - len(before)))

    def matches(self, context: Sequence[int], min_ngram: int, max_ngram: int) -> tuple[int, np.ndarray]:
        """(n, starts) as ``longest_suffix_matches``: the longest n-gram ending ``context``
        found in the documents, and the positions after its occurrences, earliest first."""
        found, low, high = 0, 0, len(self._order)
        for n in range(max(min_ngram, 1), min(max_ngram, self.max_ngram, len(context)) + 1):
            target = tuple(reversed(list(context[-n:])))  # its range lies within the (n - 1)-gram's
            low = bisect.bisect_left(self._order, target, lo=low, hi=high, key=lambda p: self._key(p, n))
            high = bisect.bisect_right(self._order, target, lo=low, hi=high, key=lambda p: self._key(p, n))
            if high == low:
                break
            found, starts = n, (low, high)
        if found:
            return found, np.sort(self._order[starts[0]:starts[1]])
        return 0, np.zeros(0, dtype=np.int64)

    def continuation(self, start: int, length: int) -> list[int]:
        """Up to ``length`` tokens from ``start``, stopping at the end of its document."""
        tokens = self._tokens[start:start + length].tolist()
        return tokens[:tokens.index(SEPARATOR)] if SEPARATOR in tokens else tokens
