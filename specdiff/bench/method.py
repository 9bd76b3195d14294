"""What a bench method is (``Method``), and the one that runs our engine on any verifier backend."""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch

from specdiff.bench.method_output import MethodOutput
from specdiff.engine import DecodingConfig, generate


class Method(Protocol):
    """One way of decoding, measured prompt by prompt. ``blockwise`` methods hold their own
    copy of the verifier (an engine in another process): they run over all prompts between
    ``open`` and ``close`` instead of interleaved with the others."""

    name: str
    blockwise: bool

    def open(self) -> None: ...

    def run(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> MethodOutput: ...

    def close(self) -> None: ...


class InProcessMethod:
    """A method on models this process holds: nothing to open or close."""

    blockwise = False

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass


class EngineMethod(InProcessMethod):
    """Our decoding loop on any verifier backend, with a drafter (None: plain decoding)."""

    def __init__(self, name: str, verifier, drafter, config: DecodingConfig, eos: set[int]):
        self.name, self.verifier, self.drafter, self.config, self.eos = name, verifier, drafter, config, eos

    def run(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> MethodOutput:
        config = dataclasses.replace(self.config, max_new_tokens=max_new_tokens)
        return MethodOutput.from_generation(generate(prompt_ids, self.verifier, self.drafter, config, self.eos))
