"""Bad input gets a clear one-line error naming the problem."""

import pytest
import torch

from conftest import tiny_causal_lm
from specdiff import AutoregressiveDrafter, DecodingConfig, DiffusionDrafter, SamplingConfig, Verifier, speculative_generate
from specdiff.cli import main
from specdiff.models.from_causal_lm import diffusion_lm_from_causal_lm


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


def test_cli_default_gamma_is_the_decoding_configs():
    import argparse

    from specdiff.cli import add_decoding_args

    parser = argparse.ArgumentParser()
    add_decoding_args(parser)
    assert parser.get_default("gamma") == DecodingConfig.gamma
