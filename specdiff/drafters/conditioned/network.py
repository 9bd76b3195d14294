"""The DFlash drafter network: a few Qwen3-style layers that read the verifier's hidden states.

Layout (z-lab's DFlash ``DFlashDraftModel``, loaded by vLLM with ``{"method": "dflash"}``):

- context features: the verifier's hidden states after the layers ``target_layer_ids``,
  concatenated, then ``fc`` (no bias) and ``hidden_norm``;
- in every layer the keys and values are [projection of the context features ; projection
  of the block], the queries come from the block only, attention within the block is not
  causal, RoPE is applied at absolute positions (q/k RMSNorm per head, as in Qwen3);
- block = [last committed token, MASK x gamma] embedded with the verifier's table; block
  row j >= 1 predicts the token at its own position through ``norm`` and the verifier's
  LM head. No embedding or head of its own.

Norms, MLP and rotary embedding are transformers' Qwen3 modules; only the attention,
whose keys and values come from two sources, is written here. The context keys and values
of each layer are computed once per committed token (``context_kv``) and kept by the
caller; the block's are never kept.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP, Qwen3RMSNorm, Qwen3RotaryEmbedding, rotate_half

ContextKV = list[tuple[Tensor, Tensor]]  # per layer: keys, values [batch, kv_heads, context, head_dim]


def default_target_layer_ids(num_target_layers: int, num_draft_layers: int) -> list[int]:
    """DFlash's default: the middle layer for one draft layer, else evenly spaced over
    layers 1 .. num_target_layers - 3 (kept inside the verifier when it is very shallow)."""
    if num_draft_layers == 1:
        return [num_target_layers // 2]
    start = min(1, num_target_layers - 1)
    end = max(start, num_target_layers - 3)
    return [int(round(start + i * (end - start) / (num_draft_layers - 1))) for i in range(num_draft_layers)]


def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [batch, heads, tokens, head_dim]; cos, sin [batch, tokens, head_dim]."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class ContextAttention(nn.Module):
    """Queries from the block; keys and values from [context features ; block]."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.head_dim = config.head_dim
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.q_norm = Qwen3RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = Qwen3RMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def _heads(self, x: Tensor, heads: int) -> Tensor:
        return x.view(*x.shape[:2], heads, self.head_dim)

    def keys_values(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """x [batch, tokens, hidden] -> keys (normed, rotated) and values [batch, kv_heads, tokens, head_dim]."""
        keys = self.k_norm(self._heads(self.k_proj(x), self.num_kv_heads)).transpose(1, 2)
        values = self._heads(self.v_proj(x), self.num_kv_heads).transpose(1, 2)
        return rope(keys, cos, sin), values

    def forward(self, block: Tensor, cos: Tensor, sin: Tensor, context: tuple[Tensor, Tensor],
                mask: Tensor | None = None) -> Tensor:
        """block [batch, tokens, hidden]; context keys/values [1 or batch, kv_heads, ctx, head_dim];
        mask [batch, 1, tokens, ctx + tokens] bool (True = attend) or None (all)."""
        batch, tokens, _ = block.shape
        queries = rope(self.q_norm(self._heads(self.q_proj(block), self.num_heads)).transpose(1, 2), cos, sin)
        block_keys, block_values = self.keys_values(block, cos, sin)
        context_keys, context_values = (t.expand(batch, -1, -1, -1) for t in context)
        keys = torch.cat([context_keys, block_keys], dim=2)
        values = torch.cat([context_values, block_values], dim=2)
        out = nn.functional.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class DFlashLayer(nn.Module):
    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.self_attn = ContextAttention(config)
        self.mlp = Qwen3MLP(config)
        self.input_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden: Tensor, cos: Tensor, sin: Tensor, context: tuple[Tensor, Tensor],
                mask: Tensor | None = None) -> Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), cos, sin, context, mask)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class DFlashNetwork(nn.Module):
    """Parameter names match the published layout: ``layers.N.*``, ``fc``, ``hidden_norm``,
    ``norm`` (and, when it has one, a separate ``mask_embedding`` [hidden])."""

    def __init__(self, config: Qwen3Config, separate_mask_embedding: bool = False):
        super().__init__()
        self.config = config
        self.target_layer_ids: list[int] = list(config.dflash_config["target_layer_ids"])
        self.mask_token_id: int = int(config.dflash_config["mask_token_id"])
        self.layers = nn.ModuleList(DFlashLayer(config) for _ in range(config.num_hidden_layers))
        self.fc = nn.Linear(len(self.target_layer_ids) * config.hidden_size, config.hidden_size, bias=False)
        self.hidden_norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(config)
        self.mask_embedding = nn.Parameter(torch.zeros(config.hidden_size)) if separate_mask_embedding else None

    def context_kv(self, features: Tensor, positions: Tensor) -> ContextKV:
        """features [batch, ctx, len(target_layer_ids) * hidden] at ``positions`` [batch, ctx]
        -> each layer's context keys and values."""
        context = self.hidden_norm(self.fc(features))
        cos, sin = self.rotary_emb(context, positions)
        return [layer.self_attn.keys_values(context, cos, sin) for layer in self.layers]

    def embed_block(self, block_ids: Tensor, embedding: nn.Embedding) -> Tensor:
        """block_ids [batch, tokens] through the verifier's ``embedding``; MASK slots take
        the separate mask embedding when the network has one."""
        embeds = embedding(block_ids)
        if self.mask_embedding is not None:
            is_mask = (block_ids == self.mask_token_id)[..., None]
            embeds = torch.where(is_mask, self.mask_embedding.to(embeds.dtype), embeds)
        return embeds

    def forward(self, block: Tensor, positions: Tensor, context: ContextKV, mask: Tensor | None = None) -> Tensor:
        """block [batch, tokens, hidden] embeddings at ``positions`` [batch, tokens] ->
        normed hidden states [batch, tokens, hidden] (feed the verifier's LM head)."""
        cos, sin = self.rotary_emb(block, positions)
        hidden = block
        for layer, layer_context in zip(self.layers, context):
            hidden = layer(hidden, cos, sin, layer_context, mask)
        return self.norm(hidden)


def dflash_config(verifier_config, num_layers: int = 1, block_size: int = 8,
                  target_layer_ids: list[int] | None = None, mask_token_id: int | None = None,
                  attention_bias: bool = False, intermediate_size: int | None = None) -> Qwen3Config:
    """A DFlash drafter config with the verifier's width and head layout. The MASK id
    defaults to the verifier's last embedding row (unused by Qwen's tokenizer).
    ``attention_bias`` gives q/k/v/o projections biases (to start from Qwen2 layers);
    ``intermediate_size`` (default: the verifier's) sets the MLP width, which the layout
    leaves free."""
    num_target = verifier_config.num_hidden_layers
    heads = verifier_config.num_attention_heads
    return Qwen3Config(
        architectures=["DFlashDraftModel"],
        hidden_size=verifier_config.hidden_size,
        intermediate_size=intermediate_size or verifier_config.intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=verifier_config.num_key_value_heads,
        head_dim=getattr(verifier_config, "head_dim", None) or verifier_config.hidden_size // heads,
        vocab_size=verifier_config.vocab_size,
        rms_norm_eps=verifier_config.rms_norm_eps,
        rope_parameters=dict(verifier_config.rope_parameters),
        max_position_embeddings=verifier_config.max_position_embeddings,
        attention_bias=attention_bias,
        tie_word_embeddings=False,
        block_size=block_size,
        num_target_layers=num_target,
        dflash_config={
            "mask_token_id": verifier_config.vocab_size - 1 if mask_token_id is None else mask_token_id,
            "target_layer_ids": target_layer_ids or default_target_layer_ids(num_target, num_layers),
        },
    )
