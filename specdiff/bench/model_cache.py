"""Every model a bench run uses, loaded once, on first use, and shared by the methods that
need it: the verifier in PyTorch, its GGUF through llama.cpp, the 0.5B (assistant and base of
the diffusion drafters), each drafter, and each backend's verify-cost table."""

from __future__ import annotations

import functools

from specdiff.drafters.loading import DrafterConfig, load_drafter
from specdiff.models.loading import check_same_tokenizer, load_causal_lm, verifier_eos_ids
from specdiff.tree.cost_cache import cached_verify_costs
from specdiff.tree.costs import VerifyCosts
from specdiff.verifiers.backends import LLAMA_CPP, TRANSFORMERS, OpenedVerifier, open_verifier


class BenchModels:
    def __init__(self, verifier_spec: str, tokenizer):
        self.verifier_spec, self.tokenizer = verifier_spec, tokenizer
        self._causal_lms: dict[tuple[str, str], tuple] = {}  # (spec, dtype) -> (model, tokenizer), shared with
        # load_drafter, so that diffusion drafters cut from a base (the 0.5B) share its weights with the assistant
        self._drafters: dict[tuple[str, str], object] = {}
        self._opened: dict[str, OpenedVerifier] = {}  # backend -> the verifier on it
        self._costs: dict[str, VerifyCosts] = {}

    def opened(self, backend: str) -> OpenedVerifier:
        """The verifier on ``backend``, opened on first use."""
        if backend not in self._opened:
            opened = self._opened[backend] = open_verifier(self.verifier_spec, backend)
            if backend == TRANSFORMERS:  # a drafter cut from the verifier itself shares its weights
                self._causal_lms[(self.verifier_spec, "float32")] = (opened.model, opened.tokenizer)
        return self._opened[backend]

    @property
    def model(self):
        """The verifier as a transformers model (fp32)."""
        return self.opened(TRANSFORMERS).model

    @property
    def verifier(self):
        return self.opened(TRANSFORMERS).verifier

    @property
    def llama_verifier(self):
        """The verifier's GGUF through llama.cpp (the ``llama`` extra)."""
        return self.opened(LLAMA_CPP).verifier

    @functools.cached_property
    def eos(self) -> set[int]:
        """The ids that end an answer, the same for every backend (read once, without the weights)."""
        return verifier_eos_ids(self.verifier_spec, self.tokenizer)

    def causal_lm(self, spec: str) -> tuple:
        """(model, tokenizer); another model than the verifier must share its tokenizer."""
        if spec == self.verifier_spec:
            return self.model, self.opened(TRANSFORMERS).tokenizer
        key = (spec, "float32")
        if key not in self._causal_lms:
            self._causal_lms[key] = load_causal_lm(spec)
            check_same_tokenizer(self.tokenizer, self._causal_lms[key][1])
        return self._causal_lms[key]

    def drafter(self, spec: str, weights: str):
        """A drafter network, one per (spec, weights), sharing base models with the assistant."""
        if (spec, weights) not in self._drafters:
            self._drafters[(spec, weights)] = load_drafter(
                spec, DrafterConfig(weights=weights), verifier_model=self.model, base_models=self._causal_lms,
                verifier_tokenizer=self.tokenizer)[0]
        return self._drafters[(spec, weights)]

    def verify_costs(self, verifier) -> VerifyCosts:
        """The verify-cost table of ``verifier`` on this machine (cached across runs)."""
        key = type(verifier).__name__
        if key not in self._costs:
            self._costs[key] = cached_verify_costs(verifier)
        return self._costs[key]
