"""A Hugging Face causal LM drafting token by token: the vanilla speculative baseline."""

from __future__ import annotations

import copy

import torch
from torch import Tensor
from transformers import DynamicCache

from specdiff.drafters.base import Draft, common_prefix_length
from specdiff.sampling import SamplingConfig, choose_tokens, make_first_candidate_greedy


class AutoregressiveDrafter:
    """Drafts ``gamma`` tokens one forward pass at a time, reusing its KV cache across
    steps (accepted draft tokens stay cached; rejected ones are cropped away)."""

    def __init__(self, model):
        self.model = model.eval()
        self.vocab_size = model.config.vocab_size
        self.reset()

    def reset(self) -> None:
        self._cache = DynamicCache(config=self.model.config)
        self._cached_tokens: list[int] = []

    def _forward(self, input_ids: Tensor, cache: DynamicCache) -> Tensor:
        """input_ids [B, T] -> logits of the last position [B, vocab] (float32)."""
        return self.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()

    @torch.inference_mode()
    def draft(
        self,
        prefix: Tensor,
        gamma: int,
        sampling: SamplingConfig,
        num_drafts: int = 1,
        generator: torch.Generator | None = None,
        greedy_first: bool = False,
    ) -> Draft:
        tokens = prefix[0].tolist()
        keep = min(common_prefix_length(self._cached_tokens, tokens), len(tokens) - 1)
        self._cache.crop(keep - self._cache.get_seq_length())
        logits = self._forward(prefix[:, keep:], self._cache)  # [1, vocab]
        self._cached_tokens = tokens

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
                    self._cached_tokens = self._cached_tokens + [int(token)]
        return Draft(tokens=torch.stack(draft_tokens, 1), draft_probs=torch.stack(draft_probs, 1))
