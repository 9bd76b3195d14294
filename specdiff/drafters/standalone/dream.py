"""Published masked-diffusion LMs of the Dream architecture (Dream, DiffuCoder) as drafters,
on transformers' ``Qwen2Model``, without remote code.

A Dream checkpoint is Qwen2 weights under Qwen2's own names (q/k/v with bias, untied head)
with ``model_type`` "Dream" and a ``mask_token_id`` in its config. What differs from Qwen2 is
the attention (bidirectional: every position sees every other) and the use of the logits:
position i predicts token i + 1. So the weights load into ``Qwen2Model`` and the drafter runs
it with an all-visible 4D mask (``DiffusionLM(bidirectional=True)``).

Everything that decides whether a checkpoint can draft for a verifier is checked from its
config, its tokenizer files and its safetensors headers before any weight is read
(:func:`check_dream`); every refusal is one line that says why.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from specdiff.drafters.standalone.from_causal_lm import build_decoder, decoder_config, output_head
from specdiff.drafters.standalone.network import DiffusionLM
from specdiff.models.loading import DTYPES, hub_reachable, real_vocabulary
from specdiff.models.tensor_files import load_safetensors, safetensors_shapes

DREAM_TYPES = ("Dream",)
# Masked-diffusion families that cannot draft for a Qwen or LLaMA verifier, and why.
UNSUPPORTED_TYPES = {
    "llada": "LLaDA has its own 126K-token tokenizer, so it cannot draft for a verifier with another tokenizer "
             "(specdiff has no tokenizer bridge); use a Dream-architecture drafter (Dream, DiffuCoder) for Qwen2.5",
    "llada_moe": "LLaDA-MoE has its own tokenizer and a mixture-of-experts body; use a Dream-architecture drafter",
}
CONFIG_FILE = "config.json"
WEIGHTS_INDEX = "model.safetensors.index.json"


def model_file(spec: str, name: str) -> Path | None:
    """A file of the checkpoint ``spec`` (a folder, or a Hub id already downloaded or reachable); None if absent."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return folder / name if (folder / name).is_file() else None
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        return None

    try:
        return Path(hf_hub_download(spec, name, local_files_only=not hub_reachable()))
    except Exception:  # not on the Hub, not cached, or no such file: not a Dream checkpoint we can read
        return None


def read_config(spec: str) -> dict | None:
    path = model_file(spec, CONFIG_FILE)
    if path is None:
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def is_masked_diffusion_lm(spec: str) -> bool:
    """Whether ``spec`` names a checkpoint of a masked-diffusion family (loadable or not)."""
    config = read_config(spec)
    model_type = str((config or {}).get("model_type", ""))
    return model_type in DREAM_TYPES or model_type.lower() in UNSUPPORTED_TYPES


def check_dream(spec: str, config: dict, verifier_tokenizer=None, tokenizer=None) -> None:
    """Refuse, in one line, a checkpoint that cannot draft (for this verifier), from its config,
    tokenizer (``tokenizer``, or read now) and safetensors headers: no tensor is loaded."""
    model_type = str(config.get("model_type", ""))
    if model_type.lower() in UNSUPPORTED_TYPES:
        raise ValueError(f"{spec}: {UNSUPPORTED_TYPES[model_type.lower()]}")
    if model_type not in DREAM_TYPES:
        raise ValueError(f"{spec}: model type {model_type!r} is not a Dream-architecture diffusion LM "
                         f"(supported: {', '.join(DREAM_TYPES)})")
    vocab_size, mask_id = int(config.get("vocab_size", 0)), config.get("mask_token_id")
    if not isinstance(mask_id, int) or not 0 <= mask_id < vocab_size:
        raise ValueError(f"{spec}: its config has no mask_token_id inside its vocabulary of {vocab_size} "
                         f"(got {mask_id!r}); a masked-diffusion drafter needs one")
    rope_scaling = config.get("rope_scaling")
    if rope_scaling is not None and not isinstance(rope_scaling, dict):
        raise ValueError(f"{spec}: rope_scaling in its config must be an object or null, got {rope_scaling!r}")
    if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) not in (None, "default"):
        raise ValueError(f"{spec}: rope scaling {rope_scaling!r} is not supported (only plain RoPE)")
    if verifier_tokenizer is not None:
        check_tokenizer_fits(spec, tokenizer or load_dream_tokenizer(spec), verifier_tokenizer, mask_id)
    check_weights(spec, config)


def check_tokenizer_fits(spec: str, tokenizer, verifier_tokenizer, mask_id: int) -> None:
    """The verifier's tokens must keep their ids in the drafter's tokenizer, and the mask
    token must not be one of them. Placeholders for unused ids (``[PAD151666]``, as a
    tokenizer converted from GGUF names the rows past its vocabulary) are not tokens."""
    drafter_vocab, verifier_vocab = tokenizer.get_vocab(), real_vocabulary(verifier_tokenizer)
    moved = [token for token, index in verifier_vocab.items() if drafter_vocab.get(token) != index]
    if moved:
        raise ValueError(f"{spec}: its tokenizer differs from the verifier's ({len(moved)} of {len(verifier_vocab)} "
                         f"verifier tokens have another id or none, e.g. {moved[0]!r}); a drafter must share the "
                         "verifier's tokenizer (Dream and DiffuCoder share Qwen2.5's)")
    clash = next((token for token, index in verifier_vocab.items() if index == mask_id), None)
    if clash is not None:
        raise ValueError(f"{spec}: its mask_token_id {mask_id} is the verifier's token {clash!r}")


def load_dream_tokenizer(spec: str):
    """The checkpoint's tokenizer without remote code: its ``tokenizer.json`` (Dream ships a
    custom tokenizer class whose vocabulary and merges are Qwen2's)."""

    path = model_file(spec, "tokenizer.json")
    if path is None:
        raise ValueError(f"{spec}: no tokenizer.json, so its tokenizer cannot be checked against the verifier's")
    return PreTrainedTokenizerFast(tokenizer_file=str(path))


def weight_files(spec: str) -> list[Path]:
    index = model_file(spec, WEIGHTS_INDEX)
    if index is not None:
        files = [model_file(spec, name) for name in _indexed_files(index)]
    else:
        files = [model_file(spec, "model.safetensors")]
    if not files or any(path is None for path in files):
        raise ValueError(f"{spec}: no complete safetensors weights (pickled .bin weights are not loaded: "
                         "they can run code)")
    return files


def _indexed_files(index: Path) -> list[str]:
    """The weight files a ``model.safetensors.index.json`` names (its ``weight_map``'s values)."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (OSError, ValueError, AttributeError):
        weight_map = None
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
        raise ValueError(f"{index}: not a weight index (a JSON object whose weight_map maps tensors to file names)")
    return sorted(set(weight_map.values()))


def check_weights(spec: str, config: dict) -> None:
    """Refuse missing, damaged or misshapen weights, read from the safetensors headers."""
    shapes: dict[str, tuple] = {}
    for path in weight_files(spec):
        shapes.update(safetensors_shapes(path))
    expected = expected_shapes(qwen2_config(config))
    if config.get("tie_word_embeddings") and "lm_head.weight" not in shapes:
        expected.pop("lm_head.weight")
    wrong = [f"{name} {shapes.get(name, 'missing')} (expected {shape})" for name, shape in expected.items()
             if shapes.get(name) != shape]
    if wrong:
        raise ValueError(f"{spec}: its weights do not fit its config: {wrong[0]}" +
                         (f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""))


def qwen2_config(config: dict, num_layers: int | None = None):
    """transformers' Qwen2 config for a Dream config (bidirectional use is the drafter's business)."""

    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings")
    qwen = Qwen2Config(**{name: config[name] for name in fields if name in config},
                       rope_parameters={"rope_type": "default", "rope_theta": float(config.get("rope_theta", 10000.0))},
                       use_sliding_window=False)  # Dream's attention ignores sliding windows
    return decoder_config(qwen, num_layers)


def expected_shapes(qwen) -> dict[str, tuple]:
    with torch.device("meta"):
        model = Qwen2ForCausalLM(qwen)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def load_dream(spec: str, dtype: str = "float32", num_layers: int | None = None,
               verifier_tokenizer=None) -> tuple[DiffusionLM, object]:
    """(network, tokenizer) of a Dream-architecture checkpoint (folder or Hub id), checked first."""
    config = read_config(spec)
    if config is None:
        raise ValueError(f"{spec}: no readable {CONFIG_FILE}")
    tokenizer = load_dream_tokenizer(spec)
    check_dream(spec, config, verifier_tokenizer, tokenizer)
    qwen = qwen2_config(config, num_layers)
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(spec):
        state.update(load_safetensors(path))
    decoder_state = {name.removeprefix("model."): tensor.to(DTYPES[dtype]) for name, tensor in state.items()
                     if name.startswith("model.") and _within(name, qwen.num_hidden_layers)}
    decoder = build_decoder(qwen, decoder_state)
    head_weight = decoder.get_input_embeddings().weight if "lm_head.weight" not in state else \
        torch.nn.Parameter(state["lm_head.weight"].to(DTYPES[dtype]), requires_grad=False)
    network = DiffusionLM(decoder, output_head(head_weight), mask_token_id=config["mask_token_id"], bidirectional=True)
    return network.eval(), tokenizer


def _within(name: str, num_layers: int) -> bool:
    parts = name.split(".")
    return parts[1] != "layers" or int(parts[2]) < num_layers
