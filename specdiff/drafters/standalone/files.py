"""Save and load a diffusion drafter as a small folder of trained deltas.

Layout: ``drafter.json`` (base model spec, number of layers, LoRA settings, model card
facts) and ``deltas.safetensors`` (every trained tensor, by parameter name: LoRA factors
``<module>.lora_A`` / ``<module>.lora_B``, the MASK embedding, ...). Base weights come
from the base model at load time, so a drafter ships in a few MB.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from specdiff.drafters.standalone.dream import is_masked_diffusion_lm, load_dream
from specdiff.drafters.standalone.from_causal_lm import diffusion_lm_from_causal_lm
from specdiff.drafters.standalone.network import DiffusionLM, is_own_parameter, parameters_by_file_name
from specdiff.models.loading import load_causal_lm
from specdiff.models.tensor_files import load_safetensors

DRAFTER_CONFIG = "drafter.json"
DRAFTER_DELTAS = "deltas.safetensors"
SHIPPED_DRAFTERS = {
    "specdiff-qwen2.5-coder-1.5b": "specdiff_qwen2.5_coder_1.5b",  # adapted + aligned
    "specdiff-qwen2.5-coder-1.5b-adapted": "specdiff_qwen2.5_coder_1.5b_adapted",  # adapted only (SpecDiff v1)
}


def shipped_drafter_dir(name: str) -> Path | None:
    if name not in SHIPPED_DRAFTERS:
        return None
    folder = Path(str(resources.files("specdiff") / "artifacts" / SHIPPED_DRAFTERS[name]))
    if not (folder / DRAFTER_CONFIG).is_file():
        raise FileNotFoundError(f"the shipped drafter {name!r} is missing from this installation ({folder})")
    return folder


def save_drafter(folder: Path, deltas: dict[str, torch.Tensor], config: dict) -> None:
    """Write the drafter folder; ``config`` needs at least ``base`` and ``num_layers``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.detach().contiguous().cpu() for name, tensor in deltas.items()},
              str(folder / DRAFTER_DELTAS))
    (folder / DRAFTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def load_deltas(network: DiffusionLM, deltas: dict[str, torch.Tensor], lora: dict | None) -> None:
    """Attach adapters (if ``lora`` and none are attached) and overwrite the named parameters
    with ``deltas`` (named as :func:`specdiff.drafters.standalone.network.file_name` says).

    Adapters stay unmerged: they act on draft-block rows only, while prefix rows use the
    base weights. The drafter's own parameters (adapters, MASK embedding) are written in
    place; a delta of a base weight gets a tensor of its own, because base weights are
    shared with the base model (and other drafters cut from it)."""
    if lora and network.lora is None:
        network.add_lora(lora["r"], lora["alpha"])
    params = parameters_by_file_name(network)
    unknown = sorted(set(deltas) - set(params))
    if unknown:
        raise ValueError(f"drafter deltas name parameters the network lacks: {unknown[:3]} ...")
    with torch.no_grad():
        for key, tensor in deltas.items():
            name, param = params[key]
            if is_own_parameter(name):
                param.copy_(tensor.to(param.dtype))
            else:
                owner, _, leaf = name.rpartition(".")
                module = network.get_submodule(owner) if owner else network
                module._parameters[leaf] = nn.Parameter(tensor.to(param.dtype).clone(),
                                                        requires_grad=param.requires_grad)


def check_drafter_files(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, deltas) of a saved drafter folder; one line naming the file when either is
    missing or damaged (no code in them can run: JSON and safetensors)."""
    try:
        config = json.loads((folder / DRAFTER_CONFIG).read_text())
        if not isinstance(config, dict) or not {"base", "num_layers"} <= config.keys():
            raise ValueError("it names no base model and layer count")
        _check_config_types(config)
    except (OSError, ValueError) as error:
        raise ValueError(f"{folder / DRAFTER_CONFIG}: not a drafter config ({str(error).splitlines()[0]})") from None
    return config, load_safetensors(folder / DRAFTER_DELTAS)


def _check_config_types(config: dict) -> None:
    if not isinstance(config["base"], str) or not config["base"]:
        raise ValueError(f"base must name a model, got {config['base']!r}")
    if type(config["num_layers"]) is not int or config["num_layers"] < 1:
        raise ValueError(f"num_layers must be a whole number >= 1, got {config['num_layers']!r}")
    lora = config.get("lora")
    if lora is not None and not (isinstance(lora, dict) and type(lora.get("r")) is int and lora["r"] >= 1
                                 and isinstance(lora.get("alpha"), (int, float))):
        raise ValueError(f"lora must be an object with a rank r >= 1 and a number alpha, got {lora!r}")


def load_diffusion_lm(folder: Path, dtype: str = "float32", base_models: dict | None = None):
    """(network, tokenizer) of a saved drafter: base layers plus the saved deltas. The base is
    a causal LM cut to ``num_layers`` or a Dream-architecture model. With ``base_models`` (a
    dict the caller keeps: (spec, dtype) -> (model, tokenizer)) drafters cut from the same
    causal LM share its weights instead of each loading a copy."""

    config, deltas = check_drafter_files(folder)
    if is_masked_diffusion_lm(config["base"]):
        network, tokenizer = load_dream(config["base"], dtype, config["num_layers"])
    else:
        key = (config["base"], dtype)
        if base_models is not None and key in base_models:
            base, tokenizer = base_models[key]
        else:
            base, tokenizer = load_causal_lm(config["base"], dtype)
            if base_models is not None:
                base_models[key] = (base, tokenizer)
        network = diffusion_lm_from_causal_lm(base, config["num_layers"])
        del base
    load_deltas(network, deltas, config.get("lora"))
    return network.eval(), tokenizer
