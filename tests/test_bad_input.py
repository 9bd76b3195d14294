"""Bad input gets a clear one-line error naming the problem."""

import pytest
import torch
from conftest import tiny_causal_lm

from specdiff import (
    AutoregressiveDrafter,
    DecodingConfig,
    DiffusionDrafter,
    SamplingConfig,
    Verifier,
    speculative_generate,
)
from specdiff.cli import main
from specdiff.drafters.from_causal_lm import diffusion_lm_from_causal_lm


@pytest.fixture(scope="module")
def verifier():
    return Verifier(tiny_causal_lm("llama", seed=0))


def test_empty_prompt(verifier):
    with pytest.raises(ValueError, match="prompt is empty"):
        speculative_generate(torch.zeros(1, 0, dtype=torch.long), AutoregressiveDrafter(verifier.model), verifier,
                             DecodingConfig())


def test_prompt_longer_than_context(verifier):
    with pytest.raises(ValueError, match="exceeds the verifier's context of 256"):
        speculative_generate(torch.ones(1, 250, dtype=torch.long), AutoregressiveDrafter(verifier.model), verifier,
                             DecodingConfig(max_new_tokens=20))


@pytest.mark.parametrize("kwargs, message", [
    (dict(gamma=0), "gamma"),
    (dict(num_drafts=0), "num_drafts"),
    (dict(max_new_tokens=0), "max_new_tokens"),
])
def test_invalid_decoding_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecodingConfig(**kwargs)


def test_invalid_steps():
    with pytest.raises(ValueError, match="steps"):
        DiffusionDrafter(diffusion_lm_from_causal_lm(tiny_causal_lm("qwen2")), steps=0)


def test_drafter_with_another_vocabulary(verifier):
    drafter = AutoregressiveDrafter(tiny_causal_lm("qwen2", vocab=40))
    with pytest.raises(ValueError, match=r"drafter's vocabulary \(40\) differs from the verifier's \(32\)"):
        speculative_generate(torch.tensor([[1, 2]]), drafter, verifier, DecodingConfig())


@pytest.mark.parametrize("flags, message", [
    (["--gamma", "0"], "gamma"),
    (["--steps", "0"], "steps"),
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--top-p", "1.2"], "top_p"),
    (["--num-drafts", "0"], "num_drafts"),
])
def test_cli_reports_invalid_settings_in_one_line(capsys, flags, message):
    assert main(["generate", "--prompt", "hi", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("specdiff: error:") and message in err and len(err.splitlines()) == 1


def test_cli_reports_unknown_model(capsys, tmp_path):
    missing = tmp_path / "no-such-model"
    missing.mkdir()
    assert main(["generate", "--verifier", str(missing), "--drafter", "none", "--prompt", "hi"]) == 2
    assert "cannot load" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "inf"], "--temperature/--top-k/--top-p: temperature must be a finite number"),
    (["--temperature", "nan"], "temperature must be a finite number"),
    (["--draft-temperature", "-1"], "--draft-temperature: temperature must be a finite number >= 0"),
])
def test_cli_names_the_flag_of_a_bad_temperature(capsys, flags, message):
    assert main(["generate", "--prompt", "hi", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_tiny_temperature_samples_the_argmax(verifier):
    from specdiff.sampling import choose_tokens

    logits = torch.tensor([[1.0, 3.0, 2.0], [50.0, -50.0, 49.0]])
    tokens, probs = choose_tokens(logits, SamplingConfig(temperature=1e-45), torch.Generator().manual_seed(0), 8)
    assert torch.isfinite(probs).all()
    assert tokens.tolist() == [[1] * 8, [0] * 8]


def test_whitespace_prompt_is_empty():
    from conftest import tiny_tokenizer

    from specdiff.prompting import encode_prompt

    with pytest.raises(ValueError, match="prompt is empty"):
        encode_prompt(tiny_tokenizer(), " \n\t ")


def test_prompt_ids_outside_the_verifiers_vocabulary(verifier):
    with pytest.raises(ValueError, match="token id 40, outside the verifier's vocabulary of 32"):
        speculative_generate(torch.tensor([[1, 40]]), AutoregressiveDrafter(verifier.model), verifier, DecodingConfig())


def test_mistyped_drafter_name_fails_at_once_without_the_hub(capsys, tiny_model_dir, monkeypatch):
    import time

    from specdiff.models import loading

    monkeypatch.setattr(loading, "hub_reachable", lambda timeout_s=3.0: False)
    started = time.perf_counter()
    code = main(["generate", "--verifier", str(tiny_model_dir), "--drafter", "specdiff-qwen2.5-coder-1.5", "--prompt", "hi"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and time.perf_counter() - started < 10
    assert "'specdiff-qwen2.5-coder-1.5' is not a named model" in err
    assert "specdiff-qwen2.5-coder-1.5b" in err and "qwen2.5-coder-1.5b-instruct" in err and len(err.splitlines()) == 1


def test_missing_local_folder_is_named(capsys, tiny_model_dir):
    assert main(["generate", "--verifier", str(tiny_model_dir), "--drafter", "runs/x/final", "--prompt", "hi"]) == 2
    assert "no such folder: runs/x/final" in capsys.readouterr().err


def test_truncated_weights_name_the_damaged_folder(tmp_path, tiny_model_dir):
    import shutil

    from specdiff.models.loading import load_causal_lm
    from specdiff.models.prepare import ModelUnavailableError

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelUnavailableError, match=f"cannot load model from {damaged}"):
        load_causal_lm(str(damaged))
