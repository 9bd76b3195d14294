"""specdiff: lossless speculative decoding with a masked-diffusion drafter (SpecDiff-2)."""

from specdiff.drafters import Accepted, AutoregressiveDrafter, ConditionedDrafter, DiffusionDrafter, Draft, Drafter
from specdiff.engine import (
    DecodingConfig,
    GenerationResult,
    StepRecord,
    autoregressive_generate,
    speculative_generate,
    stream_generate,
)
from specdiff.sampling import SamplingConfig
from specdiff.tree.build import build_tree_drafter
from specdiff.tree.config import TreeConfig
from specdiff.tree.drafter import TreeDrafter
from specdiff.verifier import Verifier
from specdiff.verifiers.backends import OpenedVerifier, open_verifier

__version__ = "0.1.0"

__all__ = [
    "Accepted",
    "AutoregressiveDrafter",
    "ConditionedDrafter",
    "DecodingConfig",
    "DiffusionDrafter",
    "Draft",
    "Drafter",
    "GenerationResult",
    "OpenedVerifier",
    "SamplingConfig",
    "StepRecord",
    "TreeConfig",
    "TreeDrafter",
    "Verifier",
    "autoregressive_generate",
    "build_tree_drafter",
    "open_verifier",
    "speculative_generate",
    "stream_generate",
]
