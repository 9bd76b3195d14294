"""vLLM's speculative configuration for a specdiff drafter spec, checked before any server starts.

- ``none``: plain decoding;
- ``ngram``: vLLM's prompt lookup;
- a DFlash-layout folder or a shipped DFlash drafter name: ``{"method": "dflash"}``, vLLM's
  native support (the drafter reads the verifier's hidden states);
- a standalone diffusion drafter (shipped name or saved folder): ``{"method":
  "custom_class"}`` with specdiff's proposer, told the drafter through the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specdiff.drafters.conditioned.files import check_fits, load_dflash, read_config
from specdiff.drafters.conditioned.shipped import dflash_drafter_folder
from specdiff.drafters.loading import check_drafter_spec
from specdiff.drafters.registry import DFLASH, DIFFUSION, DREAM, NONE, PROMPT_LOOKUP, resolve
from specdiff.serving.proposer import DRAFTER_ENV, SOURCES_ENV, STEPS_ENV
from specdiff.tree.config import TreeConfig

PROPOSER_CLASS = "specdiff.serving.proposer.DiffusionProposer"
NGRAM_MAX, NGRAM_MIN = 4, 2
DEFAULT_GAMMA = 4  # drafters without a block size of their own


@dataclass(frozen=True)
class SpeculativeSetup:
    config: dict | None  # vLLM's speculative_config, None for plain decoding
    environment: dict[str, str] = field(default_factory=dict)  # for the process that runs vLLM


def speculative_setup(drafter: str, verifier_config, gamma: int | None = None, steps: int = 1,
                      sources: str = TreeConfig.sources, verifier_tokenizer=None) -> SpeculativeSetup:
    """The setup for ``drafter`` beside a verifier with ``verifier_config`` (a transformers
    config) and ``verifier_tokenizer``; a drafter that does not fit the verifier is refused
    here, in one line, by the checks ``generate`` makes.
    ``gamma`` None: a DFlash drafter's block size - 1, else ``DEFAULT_GAMMA``. ``sources``:
    what the proposer of a standalone diffusion drafter drafts from (see ``TreeConfig``);
    other drafters take only the default."""

    if gamma is not None and gamma < 1:
        raise ValueError(f"--gamma must be >= 1, got {gamma}")
    tree = TreeConfig(sources=sources)
    resolved = resolve(drafter)
    proposed_by_us = resolved.kind in (DIFFUSION, DREAM)  # ours, Dream, DiffuCoder: specdiff's proposer
    if sources != TreeConfig.sources and not proposed_by_us:
        raise ValueError("--sources applies to standalone diffusion drafters (served by specdiff's proposer); "
                         f"--drafter {drafter} drafts by itself")
    if resolved.kind == NONE:
        return SpeculativeSetup(None)
    if resolved.kind == DFLASH:
        folder = dflash_drafter_folder(drafter, verifier_config) if resolved.shipped else resolved.folder
        config = read_config(folder)
        check_fits(config, verifier_config, str(folder))
        load_dflash(folder, verifier_config)  # weights and mask embedding checked as generate checks them
        if gamma is not None and gamma > config.block_size - 1:
            raise ValueError(f"--gamma {gamma} is beyond what the DFlash drafter in {folder} drafts per block "
                             f"(block size {config.block_size}: at most {config.block_size - 1})")
        return SpeculativeSetup({"method": "dflash", "model": str(folder.resolve()),
                                 "num_speculative_tokens": gamma or config.block_size - 1})
    gamma = gamma or DEFAULT_GAMMA
    if resolved.kind == PROMPT_LOOKUP:
        return SpeculativeSetup({"method": "ngram", "num_speculative_tokens": gamma,
                                 "prompt_lookup_max": NGRAM_MAX, "prompt_lookup_min": NGRAM_MIN})
    if proposed_by_us:
        check_drafter_spec(drafter, verifier_tokenizer)  # checked as generate checks them
        return SpeculativeSetup({"method": "custom_class", "model": PROPOSER_CLASS, "num_speculative_tokens": gamma},
                                {DRAFTER_ENV: str(resolved.folder or drafter), STEPS_ENV: str(steps),
                                 SOURCES_ENV: tree.sources})
    raise ValueError(f"--drafter {drafter!r} is not a DFlash folder, a diffusion drafter (ours, Dream or DiffuCoder), "
                     "'ngram' or 'none' "
                     "(vLLM serves those; `specdiff models list` shows the shipped drafters)")
