"""A vLLM ``custom_class`` proposer that drafts with specdiff's standalone diffusion drafter.

vLLM builds it as ``DiffusionProposer(vllm_config)`` when the speculative config is
``{"method": "custom_class", "model": "specdiff.serving.proposer.DiffusionProposer"}``
(``specdiff serve`` writes that) and calls ``propose`` once per step with every running
request's committed tokens. The drafter folder comes from ``SPECDIFF_VLLM_DRAFTER``
(``SPECDIFF_VLLM_DRAFTER_STEPS``: denoising passes), since vLLM passes a custom proposer
nothing but its config.

Drafts are argmax blocks: vLLM passes no draft probabilities for custom proposers and
verifies their tokens as one-hot proposals, which is exact only for deterministic drafts.

vLLM gives batch rows, not request ids, and rows move between steps; each row is matched
to the drafter state whose committed tokens are a prefix of the row's, so a request's
drafter cache is kept across steps (states of finished requests are dropped, oldest first).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import torch

from specdiff.drafters.base import Accepted
from specdiff.drafters.diffusion import DiffusionDrafter
from specdiff.sampling import SamplingConfig

DRAFTER_ENV, STEPS_ENV = "SPECDIFF_VLLM_DRAFTER", "SPECDIFF_VLLM_DRAFTER_STEPS"
ARGMAX = SamplingConfig(temperature=0.0)


class DrafterStates:
    """One drafter state per sequence, found by prefix; at most ``capacity`` kept."""

    def __init__(self, make_drafter, capacity: int = 64):
        self.make_drafter, self.capacity = make_drafter, capacity
        self._states: OrderedDict[int, tuple[list[int], DiffusionDrafter]] = OrderedDict()
        self._next_id = 0

    def drafter_for(self, tokens: list[int]) -> DiffusionDrafter:
        """A drafter whose committed sequence is ``tokens`` (extending a known prefix if any)."""
        best, best_length = None, 0
        for key, (known, _) in self._states.items():
            if best_length < len(known) <= len(tokens) and tokens[: len(known)] == known:
                best, best_length = key, len(known)
        if best is None:
            drafter = self.make_drafter()
            drafter.start(tokens)
            best, self._next_id = self._next_id, self._next_id + 1
        else:
            known, drafter = self._states.pop(best)
            if len(tokens) > len(known):
                new = tokens[len(known):]
                drafter.update(Accepted(tokens=new, candidate=0, num_accepted=len(new) - 1))
        self._states[best] = (list(tokens), drafter)
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)
        return drafter


class DiffusionProposer:
    def __init__(self, vllm_config):
        from specdiff.drafters.loading import DrafterConfig, load_drafter

        spec = os.environ.get(DRAFTER_ENV)
        if not spec:
            raise ValueError(f"set {DRAFTER_ENV} to the diffusion drafter (name or folder); `specdiff serve` does")
        drafter, _ = load_drafter(spec, DrafterConfig(kind="diffusion", steps=int(os.environ.get(STEPS_ENV, "1"))))
        if not isinstance(drafter, DiffusionDrafter):
            raise ValueError(f"{spec} is not a diffusion drafter")
        network, steps = drafter.network, drafter.steps
        self.gamma = vllm_config.speculative_config.num_speculative_tokens
        self.max_model_len = vllm_config.model_config.max_model_len
        self.states = DrafterStates(lambda: DiffusionDrafter(network, steps=steps))

    def load_model(self, *args, **kwargs) -> None:
        """vLLM calls this with the verifier; the drafter was loaded in ``__init__``."""

    @torch.inference_mode()
    def propose(self, sampled_token_ids: list[list[int]], num_tokens_no_spec: np.ndarray, token_ids_cpu: np.ndarray,
                slot_mappings=None) -> list[list[int]]:
        drafts = []
        for row, sampled in enumerate(sampled_token_ids):
            length = int(num_tokens_no_spec[row])
            if not sampled or length + self.gamma >= self.max_model_len:
                drafts.append([])  # no new token this step, or no room left: no speculation
                continue
            drafter = self.states.drafter_for(token_ids_cpu[row, :length].tolist())
            drafts.append(drafter.draft(self.gamma, ARGMAX, greedy_first=True).tokens[0].tolist())
        return drafts
