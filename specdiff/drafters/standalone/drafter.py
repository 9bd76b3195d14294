"""The masked-diffusion drafter: a whole block of gamma tokens from one denoising pass.

A pass runs the committed tokens not yet cached (all but the last) followed by the draft
block ``[last token, MASK x (gamma - 1)]``; a bidirectional network (Dream, DiffuCoder) gets
one more MASK, as the SpecDiff-2 reference drafts ``prefix + gamma`` masks. Logits are
shifted: block row 0 (the last committed token) predicts slot 0, block row j (a MASK standing
at slot j - 1's position) predicts slot j. Adapters, if any, act on block rows only
(bidirectional networks: on every row).

Prefix cache:
- causal networks (drafters cut from a causal LM): committed rows attend causally, so their
  keys and values are exact and cached for good; block row 0 sees the prefix and itself, the
  other block rows the prefix and the whole block. An untrained drafter therefore starts with
  the base LM's next-token prediction in slot 0.
- bidirectional networks: every row sees every row, so committed rows depend on the block and
  no cache is exact. ``prefix="exact"`` recomputes the whole prefix on every pass, as the
  reference does. ``prefix="approximate"`` keeps the committed rows' keys and values from the
  pass that first computed them (they saw that pass's masks, as Fast-dLLM's prefix cache
  does) and recomputes everything every ``prefix_refresh`` draft calls. Rejection sampling
  uses the distributions actually computed, so the approximation costs acceptance, never
  correctness.

With ``steps > 1`` slots are committed LEFT TO RIGHT in ``steps`` contiguous chunks:
chunk s is sampled from a pass in which chunks < s are filled in and later slots are
still masked, so slot j's distribution depends only on the prefix and on draft tokens to
its left, which keeps rejection sampling exact. (Orders that reveal later slots first
would make ``draft_probs[j]`` depend on tokens to its right and bias the output; they are
not offered.)
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache

from specdiff.drafter import Accepted, Draft
from specdiff.drafters.standalone.network import DiffusionLM
from specdiff.sampling import (
    SamplingConfig,
    choose_tokens,
    drafts_from_marginals,
    make_first_candidate_greedy,
    slot_confidence,
)


def chunk_bounds(gamma: int, steps: int) -> list[tuple[int, int]]:
    """Split slots 0..gamma-1 into ``steps`` contiguous, near-equal, left-to-right chunks."""
    if not 1 <= steps <= gamma:
        raise ValueError(f"steps must be in 1..gamma ({gamma}), got {steps}")
    edges = [round(index * gamma / steps) for index in range(steps + 1)]
    return list(zip(edges[:-1], edges[1:]))


def block_visibility(block: int) -> Tensor:
    """[block, block] bool: what each row of a draft block sees of the block. Row 0 (the
    last committed token) sees itself only, as in a causal pass; rows 1.. (MASK slots) see
    the whole block. Training windows and drafting use this one definition."""
    visible = torch.ones(block, block, dtype=torch.bool)
    visible[0, 1:] = False
    return visible


def block_attention_mask(num_past: int, num_causal: int, block: int, bidirectional: bool = False) -> Tensor:
    """[1, num_causal + block, num_past + num_causal + block] bool (True = attend).

    The ``num_causal`` new prefix rows attend causally; block rows attend to everything
    before the block and to the block as ``block_visibility`` says. ``bidirectional``:
    every row attends to every row."""
    rows = num_causal + block
    mask = torch.ones(rows, num_past + rows, dtype=torch.bool)
    if not bidirectional:
        mask[:num_causal, num_past:] = torch.ones(num_causal, rows, dtype=torch.bool).tril()
        mask[num_causal:, num_past + num_causal:] = block_visibility(block)
    return mask[None]


PREFIX_MODES = ("exact", "approximate")


class DiffusionDrafter:
    """Drafts with a ``DiffusionLM``. ``vocab_size``: the verifier's (default: the network's);
    slots get probability 0 outside it and on the MASK token. ``prefix``, ``prefix_refresh``:
    how a bidirectional network's prefix is computed (module docstring)."""

    feature_layers: tuple[int, ...] = ()

    def __init__(self, network: DiffusionLM, steps: int = 1, vocab_size: int | None = None, prefix: str = "exact",
                 prefix_refresh: int = 8):
        if steps < 1:
            raise ValueError(f"steps (denoising passes) must be >= 1, got {steps}")
        if prefix not in PREFIX_MODES:
            raise ValueError(f"prefix mode must be one of {', '.join(PREFIX_MODES)}, got {prefix!r}")
        if prefix_refresh < 1:
            raise ValueError(f"prefix refresh must be >= 1 draft call, got {prefix_refresh}")
        self.network = network.eval()
        self.steps = steps
        self.vocab_size = vocab_size or network.vocab_size
        self.keeps_prefix = not network.bidirectional or prefix == "approximate"  # exact bidirectional: no cache
        self.prefix_refresh = prefix_refresh if network.bidirectional and self.keeps_prefix else None
        self.start([])

    def start(self, prompt: list[int], features: Tensor | None = None) -> None:
        self._tokens = list(prompt)  # committed
        self._reset_cache()
        self._calls_since_refresh = 0

    def _reset_cache(self) -> None:
        self._cache = DynamicCache(config=self.network.config)  # keys and values of self._tokens[:self._num_cached]
        self._num_cached = 0

    def update(self, accepted: Accepted) -> None:
        self._tokens.extend(accepted.tokens)

    @property
    def _extra_masks(self) -> int:
        """MASK rows after the last committed token beyond gamma - 1: one for bidirectional
        networks (the reference's ``prefix + gamma`` masks), else none."""
        return int(self.network.bidirectional)

    def _block_pass(self, block_ids: Tensor) -> Tensor:
        """One pass over [committed tokens not cached but the last | block]; those committed
        rows join the cache when it is kept and the batch is one row.

        block_ids [K, block]. Returns hidden states [K, block, hidden]; row j predicts slot j."""
        uncached = self._tokens[self._num_cached:-1]
        num_past, num_uncached = self._num_cached, len(uncached)
        batch, block = block_ids.shape
        uncached_ids = torch.tensor([uncached], dtype=torch.long).expand(batch, -1)
        input_ids = torch.cat([uncached_ids, block_ids], dim=1)
        positions = torch.arange(num_past, num_past + num_uncached + block)[None].expand(batch, -1)
        mask = block_attention_mask(num_past, num_uncached, block, self.network.bidirectional)
        cache = None  # the exact prefix of a bidirectional network, or K rows with nothing cached yet
        if self.keeps_prefix and batch == 1:
            cache = self._cache
        elif self.keeps_prefix and num_past:  # K rows read one cached prefix: a private batch copy
            cache = copy.deepcopy(self._cache)
            cache.batch_repeat_interleave(batch)
        adapted_from = 0 if self.network.bidirectional else num_uncached
        hidden = self.network(input_ids, positions, mask, cache, adapted_from=adapted_from)
        if cache is self._cache:
            self._num_cached = num_past + num_uncached
            _crop(self._cache, self._num_cached)
        return hidden[:, num_uncached:]

    def _slot_logits(self, hidden: Tensor) -> Tensor:
        logits = self.network.lm_head(hidden).float()
        missing = self.vocab_size - logits.shape[-1]
        if missing > 0:  # a reduced draft vocabulary (the first N ids): the rest get probability 0
            logits = F.pad(logits, (0, missing), value=float("-inf"))
        elif missing < 0:  # a network vocabulary padded past the verifier's
            logits = logits[..., : self.vocab_size]
        if self.network.mask_token_id < self.vocab_size:
            logits[..., self.network.mask_token_id] = float("-inf")  # never a token of the text
        return logits

    @torch.inference_mode()
    def draft(
        self,
        gamma: int,
        sampling: SamplingConfig,
        num_drafts: int = 1,
        generator: torch.Generator | None = None,
        greedy_first: bool = False,
    ) -> Draft:
        if self.prefix_refresh is not None:  # an approximate prefix: recomputed every prefix_refresh calls
            if self._calls_since_refresh >= self.prefix_refresh:
                self._reset_cache()
                self._calls_since_refresh = 0
            self._calls_since_refresh += 1
        block = torch.full((1, gamma + self._extra_masks), self.network.mask_token_id, dtype=torch.long)
        block[0, 0] = self._tokens[-1]
        bounds = chunk_bounds(gamma, min(self.steps, gamma))

        first_end = bounds[0][1]
        hidden = self._block_pass(block)  # [1, block, hidden]
        first_logits = self._slot_logits(hidden[0, :first_end])  # [chunk, vocab], shared by all K drafts
        chunk_tokens, chunk_probs = drafts_from_marginals(first_logits, sampling, generator, num_drafts, greedy_first)
        if len(bounds) == 1:  # one pass: every draft shares the marginals
            return Draft(tokens=chunk_tokens, draft_probs=chunk_probs, confidence=slot_confidence(first_logits))

        draft_tokens = torch.zeros(num_drafts, gamma, dtype=torch.long)
        draft_probs = torch.zeros(num_drafts, gamma, self.vocab_size)
        draft_tokens[:, :first_end] = chunk_tokens
        draft_probs[:, :first_end] = chunk_probs
        blocks = block.expand(num_drafts, -1).clone()
        for start, end in bounds[1:]:
            blocks[:, 1:start + 1] = draft_tokens[:, :start]  # slot i's token sits in block row i + 1
            hidden = self._block_pass(blocks)  # [K, block, hidden]
            logits = self._slot_logits(hidden[:, start:end])  # [K, chunk, vocab]
            chunk_tokens, chunk_probs = choose_tokens(logits, sampling, generator, 1)
            chunk_tokens = chunk_tokens[..., 0]
            if greedy_first:
                chunk_tokens, chunk_probs = make_first_candidate_greedy(chunk_tokens, chunk_probs, logits[0])
            draft_tokens[:, start:end] = chunk_tokens
            draft_probs[:, start:end] = chunk_probs
        return Draft(tokens=draft_tokens, draft_probs=draft_probs)


def _crop(cache: DynamicCache, length: int) -> None:
    """Keep the first ``length`` positions of ``cache``."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)  # transformers >= 5.20 takes only a negative count
