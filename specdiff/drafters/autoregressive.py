"""A Hugging Face causal LM drafting token by token: the vanilla speculative baseline."""

from __future__ import annotations

import copy

import torch
from torch import Tensor
from transformers import DynamicCache

from specdiff.drafter import Accepted, Draft
from specdiff.kv_cache import cache_keyword
from specdiff.sampling import SamplingConfig, choose_tokens, make_first_candidate_greedy


class AutoregressiveDrafter:
    """Drafts ``gamma`` tokens one forward pass at a time, reusing its KV cache across
    steps: with K = 1 its draft tokens stay cached, and ``update`` cuts the cache back to
    the committed tokens plus the accepted ones among them, by position."""

    feature_layers: tuple[int, ...] = ()

    def __init__(self, model):
        self.model = model.eval()
        self.vocab_size = model.config.vocab_size
        self.start([])

    def start(self, prompt: list[int], features: Tensor | None = None) -> None:
        self._tokens = list(prompt)  # committed
        self._cache = DynamicCache(config=self.model.config)  # committed tokens, then own draft tokens
        self._cached_drafts = 0  # draft tokens (of candidate 0) behind the committed ones in the cache

    def update(self, accepted: Accepted) -> None:
        valid_drafts = min(accepted.num_accepted, self._cached_drafts) if accepted.candidate == 0 else 0
        self._crop(self._cached_drafts - valid_drafts)
        self._cached_drafts = 0
        self._tokens.extend(accepted.tokens)

    def _crop(self, remove: int) -> None:
        if remove > 0:
            self._cache.crop(-remove)

    def _forward(self, input_ids: Tensor, cache: DynamicCache) -> Tensor:
        """input_ids [B, T] -> logits of the last position [B, vocab] (float32)."""
        cache_argument = {cache_keyword(type(self.model)): cache}
        return self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **cache_argument).logits[:, -1].float()

    @torch.inference_mode()
    def draft(
        self,
        gamma: int,
        sampling: SamplingConfig,
        num_drafts: int = 1,
        generator: torch.Generator | None = None,
        greedy_first: bool = False,
    ) -> Draft:
        # The last committed token's logits start the draft, so it must be run now; this
        # also drops a draft that no update followed.
        self._crop(self._cache.get_seq_length() - (len(self._tokens) - 1))
        self._cached_drafts = 0
        uncached = torch.tensor([self._tokens[self._cache.get_seq_length():]])
        logits = self._forward(uncached, self._cache)  # [1, vocab]

        # K > 1 drafts continue from a private batch copy; the shared cache keeps the prefix.
        cache = self._cache
        if num_drafts > 1:
            cache = copy.deepcopy(self._cache)
            cache.batch_repeat_interleave(num_drafts)
            logits = logits.expand(num_drafts, -1)
        draft_tokens, draft_probs = [], []
        for slot in range(gamma):
            token, probs = choose_tokens(logits, sampling, generator, 1)  # [K, 1], [K, vocab]
            if greedy_first:
                first_token, probs = make_first_candidate_greedy(token[:, 0], probs, logits[0])
                token = first_token[:, None]
            draft_tokens.append(token[:, 0])
            draft_probs.append(probs)
            if slot < gamma - 1:  # the last draft token needs no pass of its own
                logits = self._forward(token, cache)
                if num_drafts == 1:
                    self._cached_drafts += 1
        return Draft(tokens=torch.stack(draft_tokens, 1), draft_probs=torch.stack(draft_probs, 1))
