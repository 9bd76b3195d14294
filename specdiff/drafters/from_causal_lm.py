"""Build a DiffusionLM from the first L layers of a Qwen2- or LLaMA-family causal LM."""

from __future__ import annotations

import torch
from torch import nn

from specdiff.drafters.diffusion_network import DiffusionLM, DiffusionLMConfig

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")


def _rope_theta(hf_config) -> float:
    params = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"rope type {rope_type!r} is not supported by the diffusion drafter (only 'default')")
    return float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))


def config_from_causal_lm(hf_config, num_layers: int | None = None) -> DiffusionLMConfig:
    """The drafter config for the first ``num_layers`` (default: all) layers of ``hf_config``."""
    model_type = hf_config.model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"cannot build a diffusion drafter from model type {model_type!r}; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if getattr(hf_config, "hidden_act", "silu") != "silu":
        raise ValueError(f"only SiLU-gated MLPs are supported, got hidden_act={hf_config.hidden_act!r}")
    total = hf_config.num_hidden_layers
    num_layers = total if num_layers is None else num_layers
    if not 1 <= num_layers <= total:
        raise ValueError(f"num_layers must be in 1..{total} for this base model, got {num_layers}")
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    qkv_bias = True if model_type == "qwen2" else bool(getattr(hf_config, "attention_bias", False))
    return DiffusionLMConfig(
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        intermediate_size=hf_config.intermediate_size,
        num_layers=num_layers,
        num_heads=hf_config.num_attention_heads,
        num_kv_heads=hf_config.num_key_value_heads,
        head_dim=head_dim,
        rope_theta=_rope_theta(hf_config),
        rms_norm_eps=hf_config.rms_norm_eps,
        qkv_bias=qkv_bias,
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
    )


def base_state_dict(causal_lm: nn.Module, num_layers: int) -> dict[str, torch.Tensor]:
    """The base weights a drafter of ``num_layers`` layers takes from ``causal_lm``, renamed."""
    state = {}
    for name, tensor in causal_lm.state_dict().items():
        if name == "lm_head.weight":
            state[name] = tensor
            continue
        if not name.startswith("model."):
            continue
        name = name[len("model."):]
        if name.startswith("layers.") and int(name.split(".")[1]) >= num_layers:
            continue
        if name.startswith(("embed_tokens.", "layers.", "norm.")):
            state[name] = tensor
    if "lm_head.weight" not in state:  # tied head
        state["lm_head.weight"] = state["embed_tokens.weight"]
    return state


def diffusion_lm_from_causal_lm(causal_lm: nn.Module, num_layers: int | None = None) -> DiffusionLM:
    """A DiffusionLM holding the embeddings, first ``num_layers`` layers, final norm and head of
    ``causal_lm``. The MASK embedding starts at the mean token embedding."""
    cfg = config_from_causal_lm(causal_lm.config, num_layers)
    dtype = next(causal_lm.parameters()).dtype
    with torch.device("meta"):
        drafter = DiffusionLM(cfg)
    state = base_state_dict(causal_lm, cfg.num_layers)
    state["mask_embedding"] = state["embed_tokens.weight"].float().mean(0).to(dtype)
    drafter.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        drafter.lm_head.weight = drafter.embed_tokens.weight
    return drafter.eval()
