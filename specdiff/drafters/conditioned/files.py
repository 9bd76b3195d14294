"""Save and load DFlash drafters in the layout vLLM loads with ``{"method": "dflash"}``.

A folder holds ``config.json`` (a Qwen3 config with ``architectures: ["DFlashDraftModel"]``,
``block_size``, ``num_target_layers`` and ``dflash_config`` = {``mask_token_id``,
``target_layer_ids``}), the weights in ``*.safetensors`` (``layers.N.*``, ``fc.weight``,
``hidden_norm.weight``, ``norm.weight``) and, when the MASK slots have their own embedding,
``mask_embedding.pt`` = {"mask_token_id": id, "embedding": [hidden]} as vLLM reads it
(loaded here with ``weights_only=True``: nothing in it can run code).

Everything that must fit the verifier is checked at load time, with one line naming the
mismatch, before any weight is used.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Qwen3Config

from specdiff.drafters.conditioned.network import DFlashNetwork
from specdiff.models.tensor_files import load_plain, load_safetensors

ARCHITECTURE = "DFlashDraftModel"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MASK_EMBEDDING_FILE = "mask_embedding.pt"


class DrafterMismatchError(ValueError):
    """A drafter folder is damaged or does not fit the verifier; the message names what."""


def is_dflash_folder(folder: str | Path) -> bool:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        return ARCHITECTURE in json.loads(path.read_text()).get("architectures", [])
    except (json.JSONDecodeError, AttributeError):
        return False


def save_dflash(network: DFlashNetwork, folder: str | Path) -> Path:
    """Write ``network`` as a vLLM-loadable folder (config last, so a complete config means
    complete weights)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in network.state_dict().items()
             if name != "mask_embedding"}
    save_file(state, str(folder / WEIGHTS_FILE))
    if network.mask_embedding is not None:
        torch.save({"mask_token_id": network.mask_token_id, "embedding": network.mask_embedding.detach().cpu()},
                   folder / MASK_EMBEDDING_FILE)
    config = network.config.to_dict()
    config["rope_theta"] = network.config.rope_parameters["rope_theta"]  # for readers of the older key
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def read_config(folder: Path) -> Qwen3Config:
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DrafterMismatchError(f"{folder / CONFIG_FILE}: cannot read the drafter config ({error})") from None
    return config_from_dict(raw, str(folder / CONFIG_FILE))


def config_from_dict(raw: dict, where: str) -> Qwen3Config:
    """A DFlash config.json's contents as a Qwen3Config with ``dflash_config`` filled in."""
    raw = dict(raw)
    dflash = dict(raw.get("dflash_config") or {})
    dflash.setdefault("mask_token_id", raw.get("mask_token_id"))
    dflash.setdefault("target_layer_ids", raw.get("target_layer_ids"))
    for key in ("mask_token_id", "target_layer_ids"):
        if dflash.get(key) is None:
            raise DrafterMismatchError(f"{where}: dflash_config has no {key}")
    raw["dflash_config"] = dflash
    if "rope_parameters" in raw:  # the older key, written beside it for other readers
        raw.pop("rope_theta", None)
    return Qwen3Config.from_dict(raw)


def check_fits(config: Qwen3Config, verifier_config, where: str) -> None:
    """Refuse a drafter whose shapes, layer ids or MASK id do not fit the verifier."""
    verifier_heads = verifier_config.num_attention_heads
    verifier_head_dim = getattr(verifier_config, "head_dim", None) or verifier_config.hidden_size // verifier_heads
    for name, drafter_value, verifier_value in (
        ("hidden size", config.hidden_size, verifier_config.hidden_size),
        ("attention heads", config.num_attention_heads, verifier_heads),
        ("key/value heads", config.num_key_value_heads, verifier_config.num_key_value_heads),
        ("head size", config.head_dim, verifier_head_dim),
        ("vocabulary", config.vocab_size, verifier_config.vocab_size),
    ):
        if drafter_value != verifier_value:
            raise DrafterMismatchError(f"{where}: the drafter's {name} ({drafter_value}) differs from the "
                                       f"verifier's ({verifier_value}): it was made for another verifier")
    depth = verifier_config.num_hidden_layers
    layer_ids = list(config.dflash_config["target_layer_ids"])
    if not layer_ids or any(not 0 <= i < depth for i in layer_ids):
        raise DrafterMismatchError(f"{where}: target_layer_ids {layer_ids} do not fit the verifier's {depth} layers")
    trained_for = getattr(config, "num_target_layers", None)
    if trained_for is not None and trained_for != depth:
        raise DrafterMismatchError(f"{where}: the drafter was made for a verifier of {trained_for} layers, "
                                   f"this one has {depth}")
    mask_id = config.dflash_config["mask_token_id"]
    if not 0 <= mask_id < verifier_config.vocab_size:
        raise DrafterMismatchError(f"{where}: mask_token_id {mask_id} is outside the verifier's embedding "
                                   f"of {verifier_config.vocab_size} rows")


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise DrafterMismatchError(f"{folder}: no *.safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            weights.update(load_safetensors(path))
        except ValueError as error:
            raise DrafterMismatchError(f"damaged weights: {error}") from None
    return {name.removeprefix("model."): tensor for name, tensor in weights.items()}


def _read_mask_embedding(folder: Path, mask_token_id: int, hidden_size: int) -> torch.Tensor | None:
    path = folder / MASK_EMBEDDING_FILE
    if not path.is_file():
        return None
    try:
        state = load_plain(path)
    except ValueError as error:
        raise DrafterMismatchError(f"not a plain tensor file: {error}") from None
    if isinstance(state, dict):
        if state.get("mask_token_id", mask_token_id) != mask_token_id:
            raise DrafterMismatchError(f"{path}: mask_token_id {state.get('mask_token_id')} differs from the "
                                       f"config's {mask_token_id}")
        state = state.get("embedding")
    if not isinstance(state, torch.Tensor) or state.numel() != hidden_size:
        raise DrafterMismatchError(f"{path}: expected a mask embedding of {hidden_size} values")
    return state.reshape(-1)


def load_dflash(folder: str | Path, verifier_config, dtype: torch.dtype = torch.float32) -> DFlashNetwork:
    """A DFlash network from ``folder``, checked against ``verifier_config`` first."""
    folder = Path(folder)
    config = read_config(folder)
    check_fits(config, verifier_config, str(folder))
    weights = _read_weights(folder)
    if any("d2t" in name or "t2d" in name for name in weights):
        raise DrafterMismatchError(f"{folder}: drafters with a reduced draft vocabulary (d2t map) are not supported")
    mask_embedding = _read_mask_embedding(folder, config.dflash_config["mask_token_id"], config.hidden_size)
    network = DFlashNetwork(config, separate_mask_embedding=mask_embedding is not None)
    expected = {name: p.shape for name, p in network.state_dict().items() if name != "mask_embedding"}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise DrafterMismatchError(f"{folder}: weights do not match the config: "
                                   f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, shape in expected.items():
        if weights[name].shape != shape:
            raise DrafterMismatchError(f"{folder}: {name} has shape {tuple(weights[name].shape)}, "
                                       f"the config needs {tuple(shape)}")
    network.load_state_dict(weights, strict=False)
    if mask_embedding is not None:
        with torch.no_grad():
            network.mask_embedding.copy_(mask_embedding)
    return network.to(dtype).eval()
