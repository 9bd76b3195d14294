"""The conditioned diffusion drafter: a DFlash network that reads the verifier's hidden states.

One denoising pass fills the block [last committed token, MASK x gamma]: block row j
predicts draft slot j - 1 at its own position, from the context (every committed token but
the last, as the verifier's hidden states) and the whole block. The context keys and
values of each layer are computed once, when ``start`` and ``update`` hand over the
verifier's features; the block's are never kept, so the cache only grows by committed
tokens and a rejected draft leaves nothing to cut back.

Every draft comes from the same per-slot marginals: the argmax (``sampling`` greedy:
one-hot ``draft_probs``, exact under rejection sampling too) or K independent samples.
"""

from __future__ import annotations

import torch
from torch import Tensor

from specdiff.drafter import Accepted, Draft
from specdiff.drafters.conditioned.network import ContextKV, DFlashNetwork
from specdiff.linear_kernels import use_fast_linear
from specdiff.sampling import SamplingConfig, drafts_from_marginals, slot_confidence


class ConditionedDrafter:
    """Drafts with a ``DFlashNetwork`` through the verifier's embedding and LM head."""

    def __init__(self, network: DFlashNetwork, verifier_model):
        self.network = use_fast_linear(network).eval()  # blocks are 2-17 rows: the faster CPU kernel
        self.embedding = verifier_model.get_input_embeddings()
        self.lm_head = verifier_model.get_output_embeddings()
        self.vocab_size = verifier_model.config.vocab_size
        self.feature_layers = tuple(network.target_layer_ids)
        self.start([])

    def start(self, prompt: list[int], features: Tensor | None = None) -> None:
        config = self.network.config
        empty = torch.zeros(1, config.num_key_value_heads, 0, config.head_dim, dtype=self._dtype)
        self._tokens = list(prompt)  # committed
        self._context: ContextKV = [(empty, empty) for _ in self.network.layers]  # of self._tokens[:-1]
        if features is not None and len(features):
            self._extend_context(features, 0)

    def update(self, accepted: Accepted) -> None:
        if accepted.features is None:
            raise ValueError("the conditioned drafter needs the verifier's hidden states of the committed tokens")
        self._extend_context(accepted.features, len(self._tokens) - 1)
        self._tokens.extend(accepted.tokens)

    @property
    def max_gamma(self) -> int:
        """Draft slots per block the drafter was built for (its block holds the last token too)."""
        return self.network.config.block_size - 1

    @property
    def sequence(self) -> list[int]:
        """The committed tokens the drafter has been told of."""
        return list(self._tokens)

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    @property
    def context_length(self) -> int:
        return self._context[0][0].shape[2]

    @torch.inference_mode()
    def _extend_context(self, features: Tensor, start: int) -> None:
        """features [tokens, F] of the tokens at positions start, start + 1, ..."""
        if start != self.context_length:
            raise ValueError(f"features start at position {start} but the context holds {self.context_length}")
        positions = torch.arange(start, start + len(features))[None]
        fresh = self.network.context_kv(features[None].to(self._dtype), positions)
        self._context = [
            (torch.cat([k0, k1], 2), torch.cat([v0, v1], 2)) for (k0, v0), (k1, v1) in zip(self._context, fresh)
        ]

    @torch.inference_mode()
    def slot_logits(self, gamma: int) -> Tensor:
        """[gamma, vocab] float32: the drafter's logits for the next ``gamma`` tokens."""
        if not self._tokens:
            raise ValueError("start() the drafter with a prompt first")
        anchor = len(self._tokens) - 1
        if self.context_length != anchor:
            raise ValueError(f"the context holds {self.context_length} tokens, the sequence {anchor} before its last")
        block_ids = torch.full((1, 1 + gamma), self.network.mask_token_id, dtype=torch.long)
        block_ids[0, 0] = self._tokens[-1]
        positions = torch.arange(anchor, anchor + 1 + gamma)[None]
        hidden = self.network(self.network.embed_block(block_ids, self.embedding), positions, self._context)
        return self.lm_head(hidden[0, 1:]).float()

    def draft(
        self,
        gamma: int,
        sampling: SamplingConfig,
        num_drafts: int = 1,
        generator: torch.Generator | None = None,
        greedy_first: bool = False,
    ) -> Draft:
        logits = self.slot_logits(gamma)
        tokens, probs = drafts_from_marginals(logits, sampling, generator, num_drafts, greedy_first)
        return Draft(tokens=tokens, draft_probs=probs, confidence=slot_confidence(logits))
