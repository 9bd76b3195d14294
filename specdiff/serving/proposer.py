"""A vLLM ``custom_class`` proposer that drafts with specdiff's standalone diffusion drafter,
alone or as one source of a tree policy beside context lookup and a suffix index.

vLLM builds it as ``DiffusionProposer(vllm_config)`` when the speculative config is
``{"method": "custom_class", "model": "specdiff.serving.proposer.DiffusionProposer"}``
(``specdiff serve`` writes that) and calls ``propose`` once per step with every running
request's committed tokens. The drafter folder comes from ``SPECDIFF_VLLM_DRAFTER``
(``SPECDIFF_VLLM_DRAFTER_STEPS``: denoising passes), since vLLM passes a custom proposer
nothing but its config.

Drafts are argmax blocks: vLLM passes no draft probabilities for custom proposers and
verifies their tokens as one-hot proposals, which is exact only for deterministic drafts.

With ``SPECDIFF_VLLM_SOURCES`` naming more than the drafter (``specdiff serve --sources``),
each request drafts through a ``TreeDrafter`` (lookup branches are deterministic too, and the
drafter drafts its argmax) and, since vLLM verifies one chain per request and step, the
policy's branch with the most expected accepted tokens is proposed. Acceptance estimates, the
suffix index (finished requests join it) and the step-cost table are shared by all requests;
the cost table is learnt from the time between vLLM's calls, keyed by the longest chain the
previous call proposed (vLLM's step: verification of every running request plus overhead).

vLLM gives batch rows, not request ids, and rows move between steps; each row is matched
to the drafter state whose committed tokens are a prefix of the row's, so a request's
drafter cache is kept across steps (states of finished requests are dropped, oldest first).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict

import numpy as np
import torch

from specdiff.drafter import Accepted, Draft
from specdiff.drafters.loading import DrafterConfig, load_drafter
from specdiff.drafters.standalone.drafter import DiffusionDrafter
from specdiff.sampling import SamplingConfig
from specdiff.tree.build import lookup_sources
from specdiff.tree.config import TreeConfig
from specdiff.tree.costs import VerifyCosts
from specdiff.tree.drafter import TreeDrafter
from specdiff.tree.estimates import AcceptanceEstimates
from specdiff.tree.sources import ModelSource
from specdiff.tree.suffix_index import SuffixIndex

DRAFTER_ENV, STEPS_ENV = "SPECDIFF_VLLM_DRAFTER", "SPECDIFF_VLLM_DRAFTER_STEPS"
SOURCES_ENV = "SPECDIFF_VLLM_SOURCES"
ARGMAX = SamplingConfig(temperature=0.0)


class DrafterStates:
    """One drafter state per sequence, found by prefix; at most ``capacity`` kept."""

    def __init__(self, make_drafter, capacity: int = 64, on_drop=None, costs: VerifyCosts | None = None):
        self.make_drafter, self.capacity, self.on_drop = make_drafter, capacity, on_drop
        self.costs = costs  # the step-cost table tree drafters share, if they do
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
            _, (known, _) = self._states.popitem(last=False)
            if self.on_drop is not None:
                self.on_drop(known)
        return drafter


class DiffusionProposer:
    def __init__(self, vllm_config):
        spec = os.environ.get(DRAFTER_ENV)
        if not spec:
            raise ValueError(f"set {DRAFTER_ENV} to the diffusion drafter (name or folder); `specdiff serve` does")
        drafter, _ = load_drafter(spec, DrafterConfig(kind="diffusion", steps=int(os.environ.get(STEPS_ENV, "1"))))
        if not isinstance(drafter, DiffusionDrafter):
            raise ValueError(f"{spec} is not a diffusion drafter")
        network, steps = drafter.network, drafter.steps
        vocab_size = vllm_config.model_config.get_vocab_size()  # a Dream drafter's head is padded past it
        self.gamma = vllm_config.speculative_config.num_speculative_tokens
        self.max_model_len = vllm_config.model_config.max_model_len
        self.tree = TreeConfig(sources=os.environ.get(SOURCES_ENV, "diffusion"), max_nodes=self.gamma,
                               max_depth=self.gamma)
        self.states = make_states(lambda: DiffusionDrafter(network, steps=steps, vocab_size=vocab_size), self.tree,
                                  vocab_size)
        self._last_call: float | None = None
        self._last_chain = 0

    def load_model(self, *args, **kwargs) -> None:
        """vLLM calls this with the verifier; the drafter was loaded in ``__init__``."""

    @torch.inference_mode()
    def propose(self, sampled_token_ids: list[list[int]], num_tokens_no_spec: np.ndarray, token_ids_cpu: np.ndarray,
                slot_mappings=None) -> list[list[int]]:
        started = time.perf_counter()
        if self.states.costs is not None and self._last_call is not None:
            self.states.costs.record(1 + self._last_chain, started - self._last_call)
        drafts = []
        for row, sampled in enumerate(sampled_token_ids):
            length = int(num_tokens_no_spec[row])
            if not sampled or length + self.gamma >= self.max_model_len:
                drafts.append([])  # no new token this step, or no room left: no speculation
                continue
            drafter = self.states.drafter_for(token_ids_cpu[row, :length].tolist())
            draft = drafter.draft(self.gamma, ARGMAX, greedy_first=True)
            drafts.append(best_chain(draft) if isinstance(drafter, TreeDrafter) else draft.tokens[0].tolist())
        self._last_chain = max(map(len, drafts), default=0)
        self._last_call = time.perf_counter()
        return drafts


def best_chain(draft: Draft) -> list[int]:
    """The row of a tree draft with the most expected accepted tokens (sum over its tokens of
    the product of the policy's estimates up to each)."""
    if draft.sources is None:
        return []
    best, best_value = 0, -1.0
    for row, branch in enumerate(draft.plan["branches"]):
        value = float(np.cumprod(branch["estimates"]).sum())
        if value > best_value:
            best, best_value = row, value
    return draft.tokens[best, : int(draft.lengths[best])].tolist()


def make_states(make_model_drafter, tree: TreeConfig, vocab_size: int) -> DrafterStates:
    """Per-request drafters: the model drafter alone, or a ``TreeDrafter`` around it whose
    estimates, suffix index and step costs all requests share."""
    if not tree.uses_tree:
        return DrafterStates(make_model_drafter)
    estimates, costs = AcceptanceEstimates(), VerifyCosts({1: 1.0}, prior=True)  # flat until vLLM's first step
    outputs = SuffixIndex(tree.max_ngram) if "suffix" in tree.source_names else None

    def make_tree() -> TreeDrafter:
        model = ModelSource(make_model_drafter(), tree.max_depth + 1) if "diffusion" in tree.source_names else None
        return TreeDrafter(vocab_size, lookup_sources(tree, outputs), model, costs, tree, estimates=estimates)

    finished = (lambda tokens: outputs.add([tokens])) if outputs is not None else None
    return DrafterStates(make_tree, on_drop=finished, costs=costs)
