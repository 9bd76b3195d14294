"""The masked-diffusion drafter network: a decoder transformers provides, run with an
attention pattern the caller gives, a MASK token, and shifted logits.

The decoder is the base model's own transformers class (``Qwen2Model``, ``LlamaModel``, ...:
whatever ``AutoModel`` builds for its config), run through its public ``forward`` with a 4D
attention mask (passed through unchanged by transformers' mask preparation), explicit
position ids and transformers' ``DynamicCache``. Logits are shifted: the output at position
i predicts token i + 1. Only what differs from a causal LM lives here:

- the MASK token: our drafters cut from a causal LM use an id one past the vocabulary with an
  embedding of their own (``mask_embedding``); Dream-architecture models have a mask token in
  their vocabulary (``mask_token_id`` from their config) and no separate embedding;
- ``bidirectional``: whether committed tokens attend to everything (Dream, DiffuCoder) or
  causally (ours, so their keys and values form an exact prefix cache);
- block-only LoRA: adapters come from ``peft`` (``add_lora``), and a row gate lets them act on
  the draft block's rows only, so prefix rows, and the prefix cache, stay the base model's.
  peft adapts every row of a call; the gate (in peft's slot for the adapter's input dropout,
  which is an identity here) zeroes the adapter's input on prefix rows, which makes their
  adapter term exactly zero.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import Tensor, nn

from specdiff.kv_cache import cache_keyword

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER = "default"  # peft's adapter name


class RowGate(nn.Module):
    """Takes the place of peft's adapter-input dropout (an identity here): the adapter sees
    the rows ``keep`` marks ([rows, 1], 1.0 or 0.0; None: every row) and zeros elsewhere, so
    those rows get exactly the base output. A module in peft's own slot, not a hook: one
    call fewer per adapted layer, which a 24-layer drafter's draft call feels on a CPU."""

    keep: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        return x if self.keep is None else x * self.keep.to(x.dtype)


class DiffusionLM(nn.Module):
    """``decoder`` (a transformers base model), ``lm_head``, and the MASK token.

    ``forward`` returns the decoder's final-normed hidden states; apply ``lm_head`` to the
    rows that predict draft slots."""

    def __init__(self, decoder: nn.Module, lm_head: nn.Module, mask_token_id: int,
                 mask_embedding: Tensor | None = None, bidirectional: bool = False):
        super().__init__()
        self.decoder = decoder
        self.lm_head = lm_head
        self.mask_token_id = mask_token_id
        self.mask_embedding = None if mask_embedding is None else nn.Parameter(mask_embedding)
        self.bidirectional = bidirectional
        self._gate = RowGate()  # shared by every adapted layer

    @property
    def config(self):
        """The decoder's transformers config (``vocab_size``, ``num_hidden_layers``, ...)."""
        return self.decoder.config

    @property
    def vocab_size(self) -> int:
        return self.decoder.config.vocab_size

    @property
    def lora(self) -> dict | None:
        """{"r", "alpha"} of the attached adapters, or None."""
        return getattr(self, "_lora", None)

    def add_lora(self, rank: int, alpha: float, seed: int = 0) -> None:
        """Attach LoRA adapters (peft; W + alpha/r * B A, B starting at 0) to every linear
        layer of the decoder stack; they act on rows from ``adapted_from`` on (see ``forward``)."""

        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(LORA_TARGETS),
                            bias="none")
        with torch.random.fork_rng():  # peft draws A from the global generator
            torch.manual_seed(seed)
            inject_adapter_in_model(config, self.decoder, adapter_name=ADAPTER)
        for module in list(self.decoder.modules()):
            if isinstance(getattr(module, "lora_dropout", None), nn.ModuleDict):
                module.lora_dropout[ADAPTER] = self._gate
        self._lora = {"r": rank, "alpha": float(alpha)}

    def embed(self, input_ids: Tensor) -> Tensor:
        embeddings = self.decoder.get_input_embeddings()
        if self.mask_embedding is None:
            return embeddings(input_ids)
        is_mask = input_ids == self.mask_token_id
        hidden = embeddings(input_ids.masked_fill(is_mask, 0))
        return torch.where(is_mask[..., None], self.mask_embedding.to(hidden.dtype), hidden)

    def forward(self, input_ids: Tensor, positions: Tensor, attn_mask: Tensor, cache=None,
                adapted_from: int | None = None) -> Tensor:
        """input_ids, positions [B, T]; attn_mask [B or 1, T, cached + T] bool (True = attend);
        ``cache`` (a ``DynamicCache`` of the cached rows, or None) gains this call's T rows:
        crop what should not stay. Rows from ``adapted_from`` on (default: none) use the
        adapters. Returns hidden states [B, T, hidden]."""
        batch, length = input_ids.shape
        dtype = self.decoder.get_input_embeddings().weight.dtype
        # A 4D additive mask: transformers passes it through unchanged; sdpa and eager both read it.
        additive = torch.zeros(attn_mask.shape, dtype=dtype).masked_fill(~attn_mask, torch.finfo(dtype).min)
        start = length if adapted_from is None else adapted_from
        self._gate.keep = None if start <= 0 else (torch.arange(length) >= start).float()[:, None]
        try:
            output = self.decoder(inputs_embeds=self.embed(input_ids), position_ids=positions,
                                  attention_mask=additive[:, None].expand(batch, -1, -1, -1),
                                  use_cache=cache is not None, **{cache_keyword(type(self.decoder)): cache})
        finally:
            self._gate.keep = None
        return output.last_hidden_state


def is_own_parameter(name: str) -> bool:
    """Whether a parameter is the drafter's own (adapter factor or MASK embedding), not its base's."""
    return ".lora_A." in name or ".lora_B." in name or name == "mask_embedding"


def file_name(parameter_name: str) -> str:
    """A parameter's name in a drafter's ``deltas.safetensors``: the decoder's own names
    without peft's wrapping (``layers.0.mlp.up_proj.lora_A``, ``norm.weight``,
    ``mask_embedding``, ``lm_head.weight``), as drafters have always been saved."""
    name = parameter_name.removeprefix("decoder.")
    for factor in ("lora_A", "lora_B"):
        name = name.replace(f".{factor}.{ADAPTER}.weight", f".{factor}")
    return name.replace(".base_layer.", ".")


def parameters_by_file_name(network: DiffusionLM) -> dict[str, tuple[str, nn.Parameter]]:
    """file name -> (parameter name in ``network``, parameter)."""
    return {file_name(name): (name, param) for name, param in network.named_parameters()}
