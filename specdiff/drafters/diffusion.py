"""The masked-diffusion drafter: a whole block of gamma tokens from one denoising pass.

Step 1 appends gamma MASK tokens to the prefix; one forward pass gives a marginal
q_j for every slot (shifted logits: the last prefix position predicts slot 0, mask
slot j - 1 predicts slot j). With ``steps > 1`` the slots are split into ``steps``
contiguous chunks committed LEFT TO RIGHT: chunk s is sampled from a pass in which
chunks < s are filled in and later slots are still masked. So slot j's distribution
depends only on the prefix and on draft tokens to its left, which is what keeps
rejection sampling exact. (Orders that reveal later slots first would make
``draft_probs[j]`` depend on tokens to the right and bias the output; they are not
offered.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from specdiff.drafters.base import Draft, common_prefix_length
from specdiff.models.diffusion_lm import DiffusionLM, KVCache
from specdiff.sampling import SamplingConfig, choose_tokens


def chunk_bounds(gamma: int, steps: int) -> list[tuple[int, int]]:
    """Split slots 0..gamma-1 into ``steps`` contiguous, near-equal, left-to-right chunks."""
    if not 1 <= steps <= gamma:
        raise ValueError(f"steps must be in 1..gamma ({gamma}), got {steps}")
    edges = [round(index * gamma / steps) for index in range(steps + 1)]
    return list(zip(edges[:-1], edges[1:]))


def block_attention_mask(num_past: int, num_new: int, block: int) -> Tensor:
    """[1, num_new + block, num_past + num_new + block] bool: new prefix tokens attend
    causally, the mask block attends to everything before it and to itself."""
    rows = num_new + block
    mask = torch.ones(rows, num_past + rows, dtype=torch.bool)
    causal = torch.ones(num_new, num_new, dtype=torch.bool).tril()
    mask[:num_new, num_past:num_past + num_new] = causal
    mask[:num_new, num_past + num_new:] = False
    return mask[None]


class DiffusionDrafter:
    """Drafts with a ``DiffusionLM``; keeps the KV cache of the committed prefix only."""

    def __init__(self, network: DiffusionLM, steps: int = 1):
        if steps < 1:
            raise ValueError(f"steps (denoising passes) must be >= 1, got {steps}")
        self.network = network.eval()
        self.steps = steps
        self.vocab_size = network.config.vocab_size
        self.reset()

    def reset(self) -> None:
        self._cache: KVCache = []
        self._cached_tokens: list[int] = []

    def _crop(self, length: int) -> None:
        self._cache = [(k[:, :, :length], v[:, :, :length]) for k, v in self._cache]
        self._cached_tokens = self._cached_tokens[:length]

    def _run(self, block_ids: Tensor, new_tokens: list[int]) -> Tensor:
        """One pass over [new prefix tokens | block]; caches the new prefix tokens.

        block_ids [B, gamma]. Returns hidden states [B, gamma, hidden] whose row j
        predicts slot j (row 0 is the last prefix position)."""
        num_past, num_new = len(self._cached_tokens), len(new_tokens)
        batch, gamma = block_ids.shape
        new_ids = torch.tensor([new_tokens], dtype=torch.long).expand(batch, -1)
        input_ids = torch.cat([new_ids, block_ids], dim=1)
        positions = torch.arange(num_past, num_past + num_new + gamma)[None].expand(batch, -1)
        mask = block_attention_mask(num_past, num_new, gamma)
        hidden, new_kv = self.network(input_ids, positions, mask, self._cache or None)
        if num_new:
            fresh = [(k[:1, :, :num_new], v[:1, :, :num_new]) for k, v in new_kv]
            self._cache = fresh if not self._cache else [
                (torch.cat([k0, k1], 2), torch.cat([v0, v1], 2)) for (k0, v0), (k1, v1) in zip(self._cache, fresh)
            ]
            self._cached_tokens = self._cached_tokens + new_tokens
        # row of the last prefix token, then mask rows 0..gamma-2 (num_new >= 1 always)
        return hidden[:, num_new - 1:num_new - 1 + gamma]

    @torch.inference_mode()
    def draft(
        self,
        prefix: Tensor,
        gamma: int,
        sampling: SamplingConfig,
        num_drafts: int = 1,
        generator: torch.Generator | None = None,
    ) -> Draft:
        tokens = prefix[0].tolist()
        keep = min(common_prefix_length(self._cached_tokens, tokens), len(tokens) - 1)
        self._crop(keep)
        mask_id = self.network.config.mask_token_id
        block = torch.full((1, gamma), mask_id, dtype=torch.long)
        bounds = chunk_bounds(gamma, min(self.steps, gamma))

        hidden = self._run(block, tokens[keep:])  # [1, gamma, hidden]
        first_end = bounds[0][1]
        logits = self.network.lm_head(hidden[:, :first_end]).float()  # [1, chunk, vocab]
        chunk_tokens, chunk_probs = choose_tokens(logits[0], sampling, generator, num_drafts)
        if len(bounds) == 1:  # one pass: every row shares the marginals
            probs = chunk_probs[None].expand(num_drafts, -1, -1)
            return Draft(tokens=chunk_tokens.T.contiguous(), draft_probs=probs)

        draft_tokens = block.expand(num_drafts, -1).clone()
        draft_probs = torch.zeros(num_drafts, gamma, self.vocab_size)
        draft_tokens[:, :first_end] = chunk_tokens.T
        draft_probs[:, :first_end] = chunk_probs
        for start, end in bounds[1:]:
            # The cached prefix already ends at the last prefix token; the block's row j
            # now comes from mask slot j - 1 inside the block.
            hidden = self._run_block_only(draft_tokens)
            logits = self.network.lm_head(hidden[:, start - 1:end - 1]).float()  # [K, chunk, vocab]
            chunk_tokens, chunk_probs = choose_tokens(logits, sampling, generator, 1)
            draft_tokens[:, start:end] = chunk_tokens[..., 0]
            draft_probs[:, start:end] = chunk_probs
        return Draft(tokens=draft_tokens, draft_probs=draft_probs)

    def _run_block_only(self, block_ids: Tensor) -> Tensor:
        """A pass over the block alone, reading the (complete) prefix cache."""
        num_past = len(self._cached_tokens)
        batch, gamma = block_ids.shape
        positions = torch.arange(num_past, num_past + gamma)[None].expand(batch, -1)
        mask = block_attention_mask(num_past, 0, gamma)
        hidden, _ = self.network(block_ids, positions, mask, self._cache)
        return hidden
