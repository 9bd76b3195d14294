"""What a drafter spec names: the one answer ``generate``, ``bench``, ``serve``, ``calibrate
eval`` and the Python API all ask, so that they cannot disagree.

A spec is a name or a path: ``none`` (plain decoding), ``ngram`` (vLLM's prompt lookup, for
``serve``), a shipped drafter name, a saved standalone diffusion drafter folder
(``drafter.json``), a DFlash-layout folder, a published Dream-architecture diffusion LM
(Dream, DiffuCoder; folder or Hub id) or masked-diffusion family we refuse (LLaDA), or else a
causal LM (named packaged model, folder or Hub id) that drafts token by token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from specdiff.drafters.conditioned.files import is_dflash_folder
from specdiff.drafters.conditioned.shipped import SHIPPED_DFLASH, shipped_dflash_dir
from specdiff.drafters.standalone.dream import is_masked_diffusion_lm
from specdiff.drafters.standalone.files import DRAFTER_CONFIG, SHIPPED_DRAFTERS, shipped_drafter_dir

DEFAULT_DRAFTER = "specdiff-qwen2.5-coder-1.5b"  # generate's and bench's specdiff method
# kinds; the first two are also the specs that name them
NONE = "none"  # plain decoding: no drafter
PROMPT_LOOKUP = "ngram"  # vLLM's n-gram proposer (serve, bench's vllm-ngram)
DIFFUSION = "diffusion"  # our standalone diffusion drafter: a folder of deltas over a base model
DREAM = "dream"  # a published masked-diffusion LM (Dream architecture, or a family refused in one line)
DFLASH = "dflash"  # a conditioned drafter in vLLM's DFlash layout (reads the verifier's hidden states)
CAUSAL_LM = "causal-lm"  # any other model: an autoregressive drafter (or a base to cut one from)


@dataclass(frozen=True)
class DrafterSpec:
    spec: str  # as the user gave it
    kind: str  # one of the kinds above
    folder: Path | None = None  # the drafter's files where the kind has a folder of ours (shipped ones included)
    shipped: bool = False  # a name of a drafter this package ships

    @property
    def conditioned(self) -> bool:
        """Whether it reads the verifier's hidden states (and so needs the verifier model to load)."""
        return self.kind == DFLASH


def shipped_names() -> tuple[str, ...]:
    """Every drafter name this package ships, with ``none``: what an unknown name is told to pick from."""
    return (*SHIPPED_DRAFTERS, *SHIPPED_DFLASH, NONE)


def resolve(spec: str) -> DrafterSpec:
    """The kind of drafter ``spec`` names (reading at most a config file; no weights)."""
    if spec.lower() == NONE:
        return DrafterSpec(spec, NONE)
    if spec == PROMPT_LOOKUP:
        return DrafterSpec(spec, PROMPT_LOOKUP)
    if spec in SHIPPED_DRAFTERS:
        return DrafterSpec(spec, DIFFUSION, shipped_drafter_dir(spec), shipped=True)
    if spec in SHIPPED_DFLASH:
        return DrafterSpec(spec, DFLASH, shipped_dflash_dir(spec), shipped=True)
    if (Path(spec) / DRAFTER_CONFIG).is_file():
        return DrafterSpec(spec, DIFFUSION, Path(spec))
    if is_dflash_folder(spec):
        return DrafterSpec(spec, DFLASH, Path(spec))
    if is_masked_diffusion_lm(spec):
        return DrafterSpec(spec, DREAM, Path(spec) if Path(spec).is_dir() else None)
    return DrafterSpec(spec, CAUSAL_LM)
