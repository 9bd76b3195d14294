"""Cut a diffusion drafter from the first L layers of a causal LM, on its own transformers class."""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import AutoModel

from specdiff.drafters.standalone.network import DiffusionLM
from specdiff.linear_kernels import use_fast_linear


def decoder_config(hf_config, num_layers: int | None = None):
    """A copy of ``hf_config`` cut to its first ``num_layers`` layers (default: all), with sdpa attention."""
    total = hf_config.num_hidden_layers
    num_layers = total if num_layers is None else num_layers
    if not 1 <= num_layers <= total:
        raise ValueError(f"num_layers must be in 1..{total} for this base model, got {num_layers}")
    config = copy.deepcopy(hf_config)
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types)[:num_layers]
    config._attn_implementation = "sdpa"
    return config


def build_decoder(config, state: dict[str, torch.Tensor]) -> nn.Module:
    """transformers' base model for ``config`` holding ``state`` (its tensors, not copies)."""

    with torch.device("meta"):
        decoder = AutoModel.from_config(config, attn_implementation="sdpa")
    decoder.load_state_dict(state, strict=True, assign=True)
    rotary = getattr(decoder, "rotary_emb", None)
    if rotary is not None:  # its frequencies are computed, never loaded
        decoder.rotary_emb = type(rotary)(config=config)
    meta = [name for name, tensor in [*decoder.named_parameters(), *decoder.named_buffers()] if tensor.is_meta]
    if meta:
        raise ValueError(f"{type(decoder).__name__} has tensors nothing gave values to: {meta[:3]}")
    return use_fast_linear(decoder)


def diffusion_lm_from_causal_lm(causal_lm: nn.Module, num_layers: int | None = None) -> DiffusionLM:
    """A drafter holding the embeddings, first ``num_layers`` layers, final norm and head of
    ``causal_lm`` (its tensors, shared, never written to). The MASK token is one past the
    vocabulary; its embedding starts at the mean token embedding."""
    config = decoder_config(causal_lm.config, num_layers)
    base = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else causal_lm.model
    prefix = "layers."
    state = {name: tensor for name, tensor in base.state_dict().items()
             if not name.startswith(prefix) or int(name.split(".")[1]) < config.num_hidden_layers}
    decoder = build_decoder(config, state)
    embedding = decoder.get_input_embeddings().weight
    head = output_head(embedding if config.tie_word_embeddings else
                       nn.Parameter(causal_lm.get_output_embeddings().weight.detach(), requires_grad=False))
    mask_embedding = decoder.get_input_embeddings().weight.float().mean(0).to(head.weight.dtype)
    return DiffusionLM(decoder, head, mask_token_id=config.vocab_size, mask_embedding=mask_embedding).eval()


def output_head(weight: nn.Parameter) -> nn.Module:
    """An LM head whose weight [vocab, hidden] is ``weight`` itself: a tied head passes the
    decoder's embedding and stays tied to it."""
    with torch.device("meta"):
        head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    head.weight = weight
    return use_fast_linear(head)
