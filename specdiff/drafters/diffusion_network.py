"""The masked-diffusion drafter network.

A Qwen2/LLaMA-style decoder whose attention pattern is given by the caller: prefix
positions attend causally (so their keys and values are cached and reused step to
step), a block of MASK tokens attends to the whole prefix and bidirectionally within
itself, and logits are shifted (the output at position i predicts token i + 1).

Written by hand, not wrapped around a transformers model, because the drafter needs
three things transformers' decoders do not expose as one stable API: an arbitrary
boolean attention pattern per call (prefix-causal plus bidirectional blocks, packed
blocks during training), a prefix cache that the mask block reads without writing, and
the output head applied only to the rows that are drafted. The layer and parameter
names match transformers' Qwen2/LLaMA so their weights load as they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specdiff.models.linear_kernels import FastLinear


@dataclass(frozen=True)
class DiffusionLMConfig:
    vocab_size: int  # output vocabulary, equal to the verifier's
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    tie_word_embeddings: bool = False

    @property
    def mask_token_id(self) -> int:
        """One past the vocabulary: no tokenizer of this vocabulary can produce it."""
        return self.vocab_size

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_cos_sin(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """positions [B, T] -> cos, sin [B, 1, T, head_dim] (the 'rotate half' layout)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    angles = positions.float()[..., None] * inv_freq  # [B, T, head_dim / 2]
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class BlockLoRALinear(FastLinear):
    """A linear layer whose low-rank adapter (Hu et al. 2021, W + alpha/r * B A) applies
    only to rows from ``adapted_from`` on: the draft block. Prefix rows, and so the
    drafter's prefix KV cache, stay exactly the base model's.

    Written here rather than taken from peft because peft adapts every row of a call,
    and the drafter needs base and adapted rows in one pass.
    """

    lora_rank: int = 0

    def add_lora(self, rank: int, alpha: float, generator: torch.Generator | None = None) -> None:
        self.lora_rank, self.lora_scale = rank, alpha / rank
        bound = 1 / self.in_features**0.5
        a = (torch.rand(rank, self.in_features, generator=generator) * 2 - 1) * bound
        self.lora_A = nn.Parameter(a.to(self.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=self.weight.dtype))

    def forward(self, x: Tensor, adapted_from: int = 0) -> Tensor:
        out = FastLinear.forward(self, x)
        if not self.lora_rank or adapted_from >= x.shape[1]:
            return out
        delta = F.linear(F.linear(x[:, adapted_from:], self.lora_A), self.lora_B) * self.lora_scale
        if adapted_from == 0:
            return out + delta
        return torch.cat([out[:, :adapted_from], out[:, adapted_from:] + delta], dim=1)


class Attention(nn.Module):
    def __init__(self, cfg: DiffusionLMConfig):
        super().__init__()
        self.cfg = cfg
        self.q_proj = BlockLoRALinear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = BlockLoRALinear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = BlockLoRALinear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = BlockLoRALinear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Tensor, past: tuple[Tensor, Tensor] | None,
        adapted_from: int,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x [B, T, hidden]; attn_mask [B or 1, T, past + T] bool (True = attend).

        Returns the output and this call's own (keys, values) [B, kv_heads, T, head_dim].
        """
        batch, length, _ = x.shape
        cfg = self.cfg
        q = self.q_proj(x, adapted_from).view(batch, length, cfg.num_heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(x, adapted_from).view(batch, length, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(x, adapted_from).view(batch, length, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        keys, values = k, v
        if past is not None and past[0].shape[2] > 0:
            keys = torch.cat([past[0].expand(batch, -1, -1, -1), k], dim=2)
            values = torch.cat([past[1].expand(batch, -1, -1, -1), v], dim=2)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask[:, None], enable_gqa=True)
        out = out.transpose(1, 2).reshape(batch, length, cfg.num_heads * cfg.head_dim)
        return self.o_proj(out, adapted_from), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: DiffusionLMConfig):
        super().__init__()
        self.gate_proj = BlockLoRALinear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = BlockLoRALinear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = BlockLoRALinear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor, adapted_from: int) -> Tensor:
        hidden = F.silu(self.gate_proj(x, adapted_from)) * self.up_proj(x, adapted_from)
        return self.down_proj(hidden, adapted_from)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DiffusionLMConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, attn_mask, past, adapted_from):
        attended, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, past, adapted_from)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x), adapted_from), new_kv


KVCache = list[tuple[Tensor, Tensor]]  # per layer: keys, values [1, kv_heads, length, head_dim]


class DiffusionLM(nn.Module):
    """Decoder with a MASK embedding; see the module docstring for the attention pattern."""

    def __init__(self, cfg: DiffusionLMConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.mask_embedding = nn.Parameter(torch.zeros(cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = FastLinear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def add_lora(self, rank: int, alpha: float, seed: int = 0) -> None:
        """Attach block-only LoRA adapters to every linear layer of the decoder stack."""
        generator = torch.Generator().manual_seed(seed)
        for module in self.layers.modules():
            if isinstance(module, BlockLoRALinear):
                module.add_lora(rank, alpha, generator)

    def embed(self, input_ids: Tensor) -> Tensor:
        is_mask = input_ids == self.config.mask_token_id
        hidden = self.embed_tokens(input_ids.masked_fill(is_mask, 0))
        return torch.where(is_mask[..., None], self.mask_embedding.to(hidden.dtype), hidden)

    def forward(
        self, input_ids: Tensor, positions: Tensor, attn_mask: Tensor, past: KVCache | None = None,
        adapted_from: int | None = None,
    ) -> tuple[Tensor, KVCache]:
        """input_ids, positions [B, T]; attn_mask [B or 1, T, past_len + T] bool; rows from
        ``adapted_from`` on (default: none) are the draft block and use the adapters.

        Returns the final-normed hidden states [B, T, hidden] (apply ``lm_head`` to the
        rows you need) and this call's keys and values per layer.
        """
        adapted_from = input_ids.shape[1] if adapted_from is None else adapted_from
        hidden = self.embed(input_ids)
        cos, sin = rotary_cos_sin(positions, self.config.head_dim, self.config.rope_theta, hidden.dtype)
        new_cache: KVCache = []
        for index, layer in enumerate(self.layers):
            hidden, new_kv = layer(hidden, cos, sin, attn_mask, None if past is None else past[index], adapted_from)
            new_cache.append(new_kv)
        return self.norm(hidden), new_cache
