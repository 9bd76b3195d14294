"""A Hugging Face causal LM behind prefill / score / commit.

The prefix is prefilled once. Each step scores ``last committed token + draft`` for K
candidate drafts in ONE forward pass over the KV cache: the K drafts are merged into a
trie (shared prefixes are computed once) and attended with a tree mask; K = 1 is a plain
causal chain. ``score`` returns a ``ScoredDrafts`` that ``commit`` consumes: it keeps
only the chosen candidate's accepted tokens in the cache and returns them, with their
hidden states at the requested layers when a drafter reads them (captured in the same
pass, only those layers kept).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache

from specdiff.kv_cache import cache_keyword
from specdiff.linear_kernels import kernel_mode


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


def build_trie(candidates: Tensor, lengths: Tensor | None = None) -> DraftTrie:
    """Merge candidate rows [K, 1 + gamma] (equal in column 0) into a trie, nodes in
    breadth-first order so that parents precede children. ``lengths`` [K] (optional): row k
    holds only its first lengths[k] draft tokens (ragged rows); past its end ``node_of``
    repeats the row's last node."""
    num_drafts, width = candidates.shape
    rows = candidates.tolist()
    row_lengths = [width - 1] * num_drafts if lengths is None else lengths.tolist()
    index: dict[tuple[int, int], int] = {}
    tokens, parents, depths = [rows[0][0]], [-1], [0]
    node_of = [[0] * width for _ in range(num_drafts)]
    for depth in range(1, width):
        for row in range(num_drafts):
            if depth > row_lengths[row]:
                node_of[row][depth] = node_of[row][depth - 1]
                continue
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


@dataclass(frozen=True)
class ScoredDrafts:
    """One scoring pass, handed back to ``Verifier.commit``."""

    trie: DraftTrie
    past_length: int  # cached tokens before the pass
    logits: Tensor  # [K, 1 + gamma, vocab] float32; position j predicts the token after column j
    features: Tensor | None  # [num_nodes, len(layers) * hidden]: hidden states after the requested layers


@dataclass(frozen=True)
class CommittedTokens:
    """The tokens a commit added to the verifier's cache: the scoring root and the accepted drafts."""

    tokens: list[int]
    features: Tensor | None  # [len(tokens), len(layers) * hidden]


def decoder_layers(model) -> Sequence[torch.nn.Module]:
    """The decoder layers of a Hugging Face causal LM (``model.model.layers``)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no model.layers: cannot read its hidden states")
    return layers


class Verifier:
    """Keeps the KV cache of every committed token except the last one, which is the
    root of the next scoring pass."""

    def __init__(self, model):
        self.model = model.eval()
        self.vocab_size = model.config.vocab_size
        self.hidden_size = model.config.hidden_size
        self.max_length = getattr(model.config, "max_position_embeddings", None)
        self._cache = DynamicCache(config=model.config)

    @property
    def cost_identity(self) -> str:
        """What a verification pass's cost depends on besides the CPU: the backend, the model's
        shape and dtype, the threads and the linear kernels (a verify-cost cache key)."""
        config, parameters = self.model.config, sum(p.numel() for p in self.model.parameters())
        return (f"transformers {type(self.model).__name__} {config.num_hidden_layers} layers {parameters} parameters "
                f"{self.model.dtype} | torch {torch.__version__} {torch.get_num_threads()} threads | "
                f"kernels {kernel_mode()}")

    @property
    def _cache_argument(self) -> dict:
        return {cache_keyword(type(self.model)): self._cache}

    @property
    def cached_length(self) -> int:
        return self._cache.get_seq_length()

    @contextmanager
    def _capture(self, layer_ids: Sequence[int]) -> Iterator[list[Tensor]]:
        """Collect the outputs of ``layer_ids`` during one forward pass: the list holds
        [tokens, len(layer_ids) * hidden] once the pass is over (empty if no ids)."""
        layers = decoder_layers(self.model)
        outputs: dict[int, Tensor] = {}
        handles = []
        for layer_id in layer_ids:
            if not 0 <= layer_id < len(layers):
                raise ValueError(f"feature layer {layer_id} is outside the verifier's {len(layers)} layers")
            handles.append(layers[layer_id].register_forward_hook(
                lambda module, args, output, layer_id=layer_id: outputs.__setitem__(
                    layer_id, output[0] if isinstance(output, tuple) else output)))
        collected: list[Tensor] = []
        try:
            yield collected
        finally:
            for handle in handles:
                handle.remove()
        if layer_ids:
            collected.append(torch.cat([outputs[i][0] for i in layer_ids], dim=-1).float())

    @torch.inference_mode()
    def prefill(self, tokens: Tensor, feature_layers: Sequence[int] = ()) -> Tensor | None:
        """tokens [1, length]: caches all but the last token. Returns their hidden states
        after ``feature_layers`` ([length - 1, len(layers) * hidden]), or None without layers."""
        self._cache = DynamicCache(config=self.model.config)
        if tokens.shape[1] < 2:
            return torch.zeros(0, len(feature_layers) * self.hidden_size) if feature_layers else None
        with self._capture(feature_layers) as features:
            self.model(input_ids=tokens[:, :-1], use_cache=True, logits_to_keep=1, **self._cache_argument)
        return features[0] if features else None

    @torch.inference_mode()
    def score(self, candidates: Tensor, feature_layers: Sequence[int] = (),
              lengths: Tensor | None = None) -> ScoredDrafts:
        """candidates [K, 1 + gamma] (column 0: the last committed token) in one pass;
        ``lengths`` [K]: draft tokens in each row when rows are ragged (see ``build_trie``)."""
        trie = build_trie(candidates, lengths)
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
        with self._capture(feature_layers) as features:
            logits = self.model(
                input_ids=trie.tokens[None], position_ids=positions, attention_mask=mask, use_cache=True,
                **self._cache_argument).logits[0].float()  # [num_nodes, vocab]
        return ScoredDrafts(trie, past, logits[trie.node_of], features[0] if features else None)

    def truncate(self, length: int) -> None:
        """Forget every cached token after the first ``length`` (a scored pass that is not committed)."""
        if not 0 <= length <= self.cached_length:
            raise ValueError(f"cannot truncate a cache of {self.cached_length} tokens to {length}")
        if length < self.cached_length:
            self._cache.crop(length - self.cached_length)  # transformers >= 5.20 takes only a negative count

    def commit(self, scored: ScoredDrafts, candidate: int, num_accepted: int) -> CommittedTokens:
        """Keep the root and the first ``num_accepted`` draft tokens of ``candidate``."""
        trie, base = scored.trie, scored.past_length
        num_nodes = len(trie.tokens)
        if self.cached_length != base + num_nodes:
            raise ValueError("commit() takes the result of the latest score() call, once")
        keep_nodes = trie.node_of[candidate, : 1 + num_accepted]
        if torch.equal(keep_nodes, torch.arange(1 + num_accepted)):
            self._cache.crop(-(num_nodes - 1 - num_accepted))
        else:
            picked = base + keep_nodes  # the root and the chosen path, gathered behind the prefix
            for layer in self._cache.layers:
                layer.keys = torch.cat([layer.keys[:, :, :base], layer.keys[:, :, picked]], dim=2)
                layer.values = torch.cat([layer.values[:, :, :base], layer.values[:, :, picked]], dim=2)
        features = scored.features[keep_nodes] if scored.features is not None else None
        return CommittedTokens(trie.tokens[keep_nodes].tolist(), features)
