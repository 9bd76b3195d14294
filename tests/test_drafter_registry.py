"""One answer to "what kind of drafter is this spec?", asked by every command."""

import json
from pathlib import Path

import torch

from specdiff.drafters import registry
from specdiff.drafters.conditioned.files import save_dflash
from specdiff.drafters.conditioned.network import DFlashNetwork, dflash_config
from specdiff.drafters.standalone.files import save_drafter

DREAM_FIXTURE = Path(__file__).parent / "fixtures" / "dream" / "dream-tiny-gqa"


def test_every_kind_of_spec_resolves_to_its_kind(tmp_path, tiny_model_dir, verifier_model):
    save_drafter(tmp_path / "ours", {"mask_embedding": torch.zeros(32)}, {"base": str(tiny_model_dir), "num_layers": 2})
    save_dflash(DFlashNetwork(dflash_config(verifier_model.config, 1, 4)), tmp_path / "dflash")
    llada = tmp_path / "llada"
    llada.mkdir()
    (llada / "config.json").write_text(json.dumps({"model_type": "llada"}))
    expected = {"none": registry.NONE, "None": registry.NONE, "ngram": registry.PROMPT_LOOKUP,
                registry.DEFAULT_DRAFTER: registry.DIFFUSION, "specdiff-dflash-qwen2.5-coder-1.5b": registry.DFLASH,
                str(tmp_path / "ours"): registry.DIFFUSION, str(tmp_path / "dflash"): registry.DFLASH,
                str(DREAM_FIXTURE): registry.DREAM, str(llada): registry.DREAM,
                str(tiny_model_dir): registry.CAUSAL_LM, "qwen2.5-coder-0.5b-instruct": registry.CAUSAL_LM}
    resolved = {spec: registry.resolve(spec) for spec in expected}
    assert {spec: r.kind for spec, r in resolved.items()} == expected
    assert resolved[registry.DEFAULT_DRAFTER].shipped and (resolved[registry.DEFAULT_DRAFTER].folder / "drafter.json").is_file()
    assert resolved[str(tmp_path / "dflash")].conditioned and not resolved[str(tmp_path / "ours")].conditioned
    assert resolved[str(tmp_path / "ours")].folder == tmp_path / "ours"


def test_unknown_names_are_told_the_shipped_names():
    assert registry.DEFAULT_DRAFTER in registry.shipped_names() and "none" in registry.shipped_names()
