"""Tiny random models built in code: no downloads, fast on a CPU."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

TINY_VOCAB = 32


def build_tiny_causal_lm(kind: str = "llama", seed: int = 0, vocab: int = TINY_VOCAB, layers: int = 2, logit_scale: float = 1.0):
    """A random causal LM; ``logit_scale`` sharpens its distributions."""
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  attn_implementation="sdpa")
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    return model.eval()


@pytest.fixture(scope="session")
def verifier_model():
    return build_tiny_causal_lm("llama", seed=0, logit_scale=30.0)


@pytest.fixture(scope="session")
def drafter_model():
    return build_tiny_causal_lm("qwen2", seed=1, logit_scale=30.0)


def build_tiny_tokenizer():
    """A character-level tokenizer of TINY_VOCAB entries (unknown characters map to 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = "<unk> abcdefghijklmnopqrstuvwxyz0123456789\n.()=:".split(" ")
    chars = [alphabet[0]] + list(alphabet[1])[: TINY_VOCAB - 1]
    vocab = {token: index for index, token in enumerate(chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<unk>")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny Qwen2 model with a tokenizer: loadable like any local model folder."""
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    build_tiny_causal_lm("qwen2", seed=4).save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    return folder


class RunsCodeWhenUnpickled:
    """Unpickling this runs ``touch marker``: what a hostile file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def write_random_teacher_shard(folder, records: int = 5, prompt_len: int = 6, completion_len: int = 20):
    """A teacher-data folder of random token ids (one shard), as `specdiff calibrate data` writes."""
    import json

    folder.mkdir(parents=True)
    rng = torch.Generator().manual_seed(0)
    rows = [{"prompt_ids": torch.randint(0, TINY_VOCAB, (prompt_len,), generator=rng).tolist(),
             "completion_ids": torch.randint(0, TINY_VOCAB, (completion_len,), generator=rng).tolist()}
            for _ in range(records)]
    (folder / "shard-00000.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def build_sharp_random_drafter(verifier_config, block_size: int = 8):
    """Random weights, with per-head q/k norms scaled up so that attention is sharp: every
    slot and every context then drafts a different token (a flat random drafter drafts
    one token everywhere, which would hide a slot or position offset)."""
    from specdiff.drafters.conditioned.network import DFlashNetwork, dflash_config

    network = DFlashNetwork(dflash_config(verifier_config, 2, block_size, [2, 15, 27], mask_token_id=0),
                            separate_mask_embedding=True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in network.named_parameters():
            if param.ndim == 2:
                param.normal_(0, 0.1, generator=generator)
            if "q_norm" in name or "k_norm" in name:
                param.fill_(6.0)
        network.mask_embedding.normal_(0, 1, generator=generator)
    return network


# The helpers above, as fixtures: a test asks for one by name instead of importing conftest.


@pytest.fixture(scope="session")
def tiny_causal_lm():
    return build_tiny_causal_lm


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer


@pytest.fixture(scope="session")
def RunsCode():
    return RunsCodeWhenUnpickled


@pytest.fixture(scope="session")
def random_teacher_shard():
    return write_random_teacher_shard


@pytest.fixture(scope="session")
def sharp_random_drafter():
    return build_sharp_random_drafter
