"""Build a drafter from a spec: a shipped or saved diffusion drafter, a published
Dream-architecture diffusion LM (Dream, DiffuCoder), a DFlash-layout drafter folder
(conditioned on the verifier's hidden states), an untrained diffusion or DFlash drafter, or an
autoregressive causal LM."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AutoConfig

from specdiff.drafters import AutoregressiveDrafter, DiffusionDrafter
from specdiff.drafters.conditioned.drafter import ConditionedDrafter
from specdiff.drafters.conditioned.files import check_fits, load_dflash
from specdiff.drafters.conditioned.network import DFlashNetwork, dflash_config
from specdiff.drafters.conditioned.shipped import dflash_drafter_folder
from specdiff.drafters.registry import DFLASH, DIFFUSION, DREAM, resolve, shipped_names
from specdiff.drafters.standalone.drafter import PREFIX_MODES
from specdiff.drafters.standalone.dream import check_dream, is_masked_diffusion_lm, load_dream, read_config
from specdiff.drafters.standalone.files import check_drafter_files, load_diffusion_lm
from specdiff.drafters.standalone.from_causal_lm import diffusion_lm_from_causal_lm
from specdiff.linear_kernels import first_rows, int8_is_fast, quantize_linears
from specdiff.models.loading import DTYPES, check_same_tokenizer, load_causal_lm, load_tokenizer, resolve_model_folder

DRAFTER_KINDS = ("auto", "ar", "diffusion", "dflash")
DRAFTER_WEIGHTS = ("auto", "float32", "int8")


@dataclass(frozen=True)
class DrafterConfig:
    """How ``load_drafter`` builds a drafter from its spec (CLI: ``--drafter-<field>``)."""

    kind: str = field(default="auto", metadata={
        "choices": DRAFTER_KINDS,
        "help": "auto recognises saved folders and Dream-architecture diffusion LMs (Dream, DiffuCoder); "
                "diffusion: cut an untrained diffusion drafter from a causal LM; "
                "dflash: an untrained DFlash drafter for the verifier --drafter names"})
    layers: int | None = field(default=None, metadata={
        "help": "layers of an untrained drafter (diffusion: cut from the causal LM, default all; dflash: 1)"})
    steps: int = field(default=1, metadata={"aliases": ("--steps",),
                                            "help": "denoising passes per draft (standalone diffusion drafters)"})
    block_size: int = field(default=8, metadata={"help": "block size of an untrained DFlash drafter"})
    vocab: int | None = field(default=None, metadata={
        "help": "standalone diffusion drafters: draft only among the N lowest token ids (BPE merge order, "
                "roughly frequency): a smaller LM head; other tokens get draft probability 0, so output stays "
                "lossless"})
    prefix: str = field(default="exact", metadata={
        "choices": PREFIX_MODES,
        "help": "bidirectional drafters (Dream, DiffuCoder): exact recomputes the prefix on every draft, as the "
                "SpecDiff-2 reference does; approximate reuses the prefix's keys and values from the pass that "
                "first computed them, recomputed every --drafter-prefix-refresh drafts (cheaper drafts, lower "
                "acceptance, still lossless)"})
    prefix_refresh: int = field(default=8, metadata={
        "help": "approximate prefix: recompute the whole prefix every N draft calls"})
    weights: str = field(default="auto", metadata={
        "choices": DRAFTER_WEIGHTS,
        "help": "int8: the drafter's own linear layers compute with int8 weights (per-row scales): draft calls "
                "about 2x cheaper at the same acceptance, output still lossless (draft_probs are what the drafter "
                "computed); auto: int8 where PyTorch has an x86 int8 engine, else float32"})

    def __post_init__(self) -> None:
        if self.kind not in DRAFTER_KINDS:
            raise ValueError(f"drafter kind must be one of {', '.join(DRAFTER_KINDS)}, got {self.kind!r}")
        if self.steps < 1:
            raise ValueError(f"steps (denoising passes) must be >= 1, got {self.steps}")
        if self.layers is not None and self.layers < 1:
            raise ValueError(f"drafter layers must be >= 1, got {self.layers}")
        if self.vocab is not None and self.vocab < 1:
            raise ValueError(f"--drafter-vocab must be >= 1, got {self.vocab}")
        if self.weights not in DRAFTER_WEIGHTS:
            raise ValueError(f"drafter weights must be one of {', '.join(DRAFTER_WEIGHTS)}, got {self.weights!r}")
        if self.prefix not in PREFIX_MODES:
            raise ValueError(f"drafter prefix mode must be one of {', '.join(PREFIX_MODES)}, got {self.prefix!r}")
        if self.prefix_refresh < 1:
            raise ValueError(f"--drafter-prefix-refresh must be >= 1 draft call, got {self.prefix_refresh}")
        if self.block_size < 2:
            raise ValueError(f"drafter block size must be >= 2 (the last token and one slot), got {self.block_size}")


def check_drafter_spec(spec: str, verifier_tokenizer=None) -> None:
    """Fail at once (before any model loads) when ``spec`` names no drafter that can be found,
    or a diffusion drafter that cannot draft (for the verifier whose tokenizer is given): its
    files, its config and its tokenizer. ``generate``, ``bench``, ``calibrate eval`` and
    ``serve`` all check drafters here."""
    resolved = resolve(spec)
    if resolved.kind == DIFFUSION:
        config, _ = check_drafter_files(resolved.folder)
        if is_masked_diffusion_lm(config["base"]):
            check_dream(config["base"], read_config(config["base"]), verifier_tokenizer=verifier_tokenizer)
        elif verifier_tokenizer is not None:
            check_same_tokenizer(verifier_tokenizer, load_tokenizer(config["base"]))
    elif resolved.kind == DREAM:
        check_dream(spec, read_config(spec), verifier_tokenizer=verifier_tokenizer)
    elif resolved.kind != DFLASH:
        resolve_model_folder(spec, other_names=shipped_names())


def load_drafter(spec: str, config: DrafterConfig = DrafterConfig(), dtype: str = "float32", verifier_model=None,
                 base_models: dict | None = None, verifier_tokenizer=None):
    """(drafter, tokenizer or None); see :func:`_build_drafter`. With ``config.weights`` int8
    the drafter's own network (never the verifier's layers a DFlash drafter reads) computes
    with int8 weights. ``base_models``: see :func:`load_diffusion_lm` (diffusion drafters
    cut from the same base then share its weights). ``verifier_tokenizer``: a Dream-architecture
    drafter is checked against it before its weights load."""
    drafter, tokenizer = _build_drafter(spec, config, dtype, verifier_model, base_models, verifier_tokenizer)
    if config.vocab is not None:
        if not isinstance(drafter, DiffusionDrafter):
            raise ValueError("--drafter-vocab applies to standalone diffusion drafters only")
        head = drafter.network.lm_head
        drafter.network.lm_head = first_rows(head, min(config.vocab, head.out_features))
    if config.weights == "int8" or (config.weights == "auto" and int8_is_fast() and dtype == "float32"):
        network = drafter.model if isinstance(drafter, AutoregressiveDrafter) else drafter.network
        quantize_linears(network)
    return drafter, tokenizer


def _build_drafter(spec: str, config: DrafterConfig, dtype: str, verifier_model, base_models: dict | None,
                   verifier_tokenizer=None):
    """(drafter, tokenizer or None).

    kind "auto": a saved diffusion drafter, a Dream-architecture diffusion LM or a DFlash folder
    if ``spec`` names one, else an autoregressive drafter. kind "diffusion" with a causal LM spec: an untrained (not
    adapted) diffusion drafter from its first ``config.layers`` layers (default: all). kind
    "dflash" with a causal LM spec (the verifier): an untrained DFlash drafter of
    ``config.layers`` layers (default 1) for it. DFlash drafters use the verifier's embedding
    and head, so they need ``verifier_model`` and come without a tokenizer of their own."""
    kind, num_layers, steps = config.kind, config.layers, config.steps
    resolved = resolve(spec)
    if kind in ("auto", "dflash") and resolved.kind == DFLASH:
        _need_verifier(verifier_model)
        folder = dflash_drafter_folder(spec) if resolved.shipped else resolved.folder  # shipped: built once
        return ConditionedDrafter(load_dflash(folder, verifier_model.config, DTYPES[dtype]), verifier_model), None
    if kind == "dflash":
        _need_verifier(verifier_model)
        return untrained_dflash(spec, verifier_model, num_layers or 1, config.block_size, dtype), None
    vocab_size = None if verifier_model is None else verifier_model.config.vocab_size

    def diffusion_drafter(network):
        return DiffusionDrafter(network, steps=steps, vocab_size=vocab_size, prefix=config.prefix,
                                prefix_refresh=config.prefix_refresh)

    if kind in ("auto", "diffusion") and resolved.kind == DIFFUSION:
        network, tokenizer = load_diffusion_lm(resolved.folder, dtype, base_models)
        return diffusion_drafter(network), tokenizer
    if kind in ("auto", "diffusion") and resolved.kind == DREAM:
        network, tokenizer = load_dream(spec, dtype, num_layers, verifier_tokenizer=verifier_tokenizer)
        return diffusion_drafter(network), tokenizer
    model, tokenizer = load_causal_lm(spec, dtype, other_names=shipped_names())
    if kind == "diffusion":
        return diffusion_drafter(diffusion_lm_from_causal_lm(model, num_layers)), tokenizer
    return AutoregressiveDrafter(model), tokenizer


def untrained_dflash(spec: str, verifier_model, num_layers: int, block_size: int, dtype: str = "float32",
                     seed: int = 0) -> ConditionedDrafter:
    """A randomly initialised DFlash drafter for the model ``spec`` names, which must fit the verifier."""

    target_config = AutoConfig.from_pretrained(resolve_model_folder(spec))
    config = dflash_config(target_config, num_layers, block_size)
    check_fits(config, verifier_model.config, f"an untrained DFlash drafter for {spec}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = DFlashNetwork(config)
    return ConditionedDrafter(network.to(DTYPES[dtype]), verifier_model)


def _need_verifier(verifier_model) -> None:
    if verifier_model is None:
        raise ValueError("a DFlash drafter reads the verifier's hidden states: load it with verifier_model=")
