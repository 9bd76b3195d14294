"""A Hugging Face causal LM behind prefill / score / commit.

The prefix is prefilled once. Each step scores ``last committed token + draft`` for K
candidate drafts in ONE forward pass over the KV cache: the K drafts are merged into a
trie (shared prefixes are computed once) and attended with a tree mask; K = 1 is a plain
causal chain. ``commit`` keeps only the chosen candidate's accepted tokens in the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache


@dataclass(frozen=True)
class DraftTrie:
    """The distinct nodes of K candidate rows [K, 1 + gamma] sharing column 0 (the root)."""

    tokens: Tensor  # [num_nodes] int64, node 0 is the root
    depths: Tensor  # [num_nodes] int64
    ancestors: Tensor  # [num_nodes, num_nodes] bool, node i may attend to node j (j = i included)
    node_of: Tensor  # [K, 1 + gamma] int64, row k's node at each depth

    @property
    def is_chain(self) -> bool:
        return int(self.depths[-1]) == len(self.depths) - 1


def build_trie(candidates: Tensor) -> DraftTrie:
    """Merge candidate rows [K, 1 + gamma] (equal in column 0) into a trie, nodes in
    breadth-first order so that parents precede children."""
    num_drafts, width = candidates.shape
    rows = candidates.tolist()
    index: dict[tuple[int, int], int] = {}
    tokens, parents, depths = [rows[0][0]], [-1], [0]
    node_of = [[0] * width for _ in range(num_drafts)]
    for depth in range(1, width):
        for row in range(num_drafts):
            key = (node_of[row][depth - 1], rows[row][depth])
            if key not in index:
                index[key] = len(tokens)
                tokens.append(rows[row][depth])
                parents.append(key[0])
                depths.append(depth)
            node_of[row][depth] = index[key]
    ancestors = torch.eye(len(tokens), dtype=torch.bool)
    for node in range(1, len(tokens)):
        ancestors[node] |= ancestors[parents[node]]
    return DraftTrie(torch.tensor(tokens), torch.tensor(depths), ancestors, torch.tensor(node_of))


class Verifier:
    """Keeps the KV cache of every committed token except the last one, which is the
    root of the next scoring pass."""

    def __init__(self, model):
        self.model = model.eval()
        self.vocab_size = model.config.vocab_size
        self.max_length = getattr(model.config, "max_position_embeddings", None)
        self._cache = DynamicCache(config=model.config)
        self._trie: DraftTrie | None = None

    @property
    def cached_length(self) -> int:
        return self._cache.get_seq_length()

    @torch.inference_mode()
    def prefill(self, tokens: Tensor) -> None:
        """tokens [1, length]: caches all but the last token."""
        self._cache = DynamicCache(config=self.model.config)
        self._trie = None
        if tokens.shape[1] > 1:
            self.model(input_ids=tokens[:, :-1], cache=self._cache, use_cache=True, logits_to_keep=1)

    @torch.inference_mode()
    def score(self, candidates: Tensor) -> Tensor:
        """candidates [K, 1 + gamma] (column 0: the last committed token) -> logits
        [K, 1 + gamma, vocab] float32; position j predicts the token after column j."""
        trie = build_trie(candidates)
        past = self.cached_length
        num_nodes = len(trie.tokens)
        positions = (past + trie.depths)[None]
        mask = None
        if not trie.is_chain:
            visible = torch.ones(num_nodes, past + num_nodes, dtype=torch.bool)
            visible[:, past:] = trie.ancestors
            # A 4D additive mask is passed through unchanged by transformers' mask
            # preparation and is understood by both its sdpa and eager attention.
            dtype = self.model.dtype
            mask = torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)[None, None]
        logits = self.model(
            input_ids=trie.tokens[None], position_ids=positions, attention_mask=mask, cache=self._cache, use_cache=True
        ).logits[0].float()  # [num_nodes, vocab]
        self._trie = trie
        return logits[trie.node_of]

    def commit(self, candidate: int, num_accepted: int) -> None:
        """Keep the root and the first ``num_accepted`` draft tokens of ``candidate``."""
        trie, self._trie = self._trie, None
        num_nodes = len(trie.tokens)
        base = self.cached_length - num_nodes
        keep_nodes = trie.node_of[candidate, : 1 + num_accepted]
        if torch.equal(keep_nodes, torch.arange(1 + num_accepted)):
            self._cache.crop(-(num_nodes - 1 - num_accepted))
            return
        picked = base + keep_nodes  # the root and the chosen path, gathered behind the prefix
        for layer in self._cache.layers:
            layer.keys = torch.cat([layer.keys[:, :, :base], layer.keys[:, :, picked]], dim=2)
            layer.values = torch.cat([layer.values[:, :, :base], layer.values[:, :, picked]], dim=2)
