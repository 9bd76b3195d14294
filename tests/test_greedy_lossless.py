"""Greedy speculative output equals plain greedy output token for token."""

import pytest
import torch

from specdiff import (
    AutoregressiveDrafter,
    DecodingConfig,
    DiffusionDrafter,
    SamplingConfig,
    Verifier,
    autoregressive_generate,
    speculative_generate,
    stream_generate,
)
from specdiff.drafters.standalone.from_causal_lm import diffusion_lm_from_causal_lm
from specdiff.linear_kernels import first_rows, quantize_linears

PROMPTS = [[1, 2, 3, 4, 5], [7], [30, 2, 2, 2, 9, 14, 3, 3, 0, 1, 20]]


@pytest.fixture(scope="module")
def verifier(tiny_causal_lm):
    return Verifier(tiny_causal_lm("llama", seed=0, logit_scale=30.0))


def make_drafter(tiny_causal_lm, kind, verifier, steps):
    if kind.endswith("-int8"):  # the same drafter computing with int8 weights
        drafter = make_drafter(tiny_causal_lm, kind.removesuffix("-int8"), verifier, steps)
        assert quantize_linears(drafter.network if kind.startswith("diffusion") else drafter.model) > 0
        return drafter
    if kind == "diffusion-vocab":  # drafting among the first half of the token ids only
        drafter = make_drafter(tiny_causal_lm, "diffusion", verifier, steps)
        drafter.network.lm_head = first_rows(drafter.network.lm_head, drafter.vocab_size // 2)
        return drafter
    if kind == "self":  # the verifier drafting for itself: every greedy draft token is accepted
        return AutoregressiveDrafter(verifier.model)
    base = tiny_causal_lm("qwen2", seed=1, logit_scale=30.0)
    if kind == "ar":
        return AutoregressiveDrafter(base)
    return DiffusionDrafter(diffusion_lm_from_causal_lm(base), steps=steps)


@pytest.mark.parametrize("kind, steps", [("ar", 1), ("diffusion", 1), ("diffusion", 3), ("self", 1), ("ar-int8", 1),
                                         ("diffusion-int8", 1), ("diffusion-vocab", 1)])
@pytest.mark.parametrize("gamma", [1, 4, 7])
def test_speculative_greedy_equals_plain_greedy(tiny_causal_lm, verifier, kind, steps, gamma):
    drafter = make_drafter(tiny_causal_lm, kind, verifier, steps)
    for prompt in PROMPTS:
        prompt_ids = torch.tensor([prompt])
        config = DecodingConfig(gamma=gamma, max_new_tokens=30)
        reference = autoregressive_generate(prompt_ids, verifier, config)
        result = speculative_generate(prompt_ids, verifier, drafter, config)
        assert result.tokens == reference.tokens
        assert len(result.tokens) == 30
        assert all(step.drafted <= gamma for step in result.steps)


def test_self_drafting_accepts_everything(tiny_causal_lm, verifier):
    drafter = make_drafter(tiny_causal_lm, "self", verifier, 1)
    result = speculative_generate(torch.tensor([PROMPTS[0]]), verifier, drafter, DecodingConfig(gamma=4, max_new_tokens=25))
    assert result.tau == 5.0
    assert result.verifier_calls == 5


@pytest.mark.parametrize("num_drafts", [2, 5])
@pytest.mark.parametrize("argmax_candidate", [True, False])
def test_multi_draft_greedy_equals_plain_greedy(tiny_causal_lm, verifier, num_drafts, argmax_candidate):
    drafter = make_drafter(tiny_causal_lm, "diffusion", verifier, 1)
    config = DecodingConfig(gamma=5, max_new_tokens=30, num_drafts=num_drafts,
                            draft_sampling=SamplingConfig(temperature=1.5), argmax_candidate=argmax_candidate)
    for prompt in PROMPTS:
        prompt_ids = torch.tensor([prompt])
        reference = autoregressive_generate(prompt_ids, verifier, config)
        assert speculative_generate(prompt_ids, verifier, drafter, config).tokens == reference.tokens


def test_stops_exactly_at_eos_and_never_overshoots(tiny_causal_lm, verifier):
    prompt_ids = torch.tensor([PROMPTS[0]])
    reference = autoregressive_generate(prompt_ids, verifier, DecodingConfig(max_new_tokens=30)).tokens
    eos = reference[12]
    first_eos = reference.index(eos)
    drafter = make_drafter(tiny_causal_lm, "self", verifier, 1)
    result = speculative_generate(prompt_ids, verifier, drafter, DecodingConfig(gamma=7, max_new_tokens=30), {eos})
    assert result.tokens == reference[: first_eos + 1]
    assert result.stop_reason == "eos"
    for max_new in (1, 2, 9):
        capped = speculative_generate(prompt_ids, verifier, drafter, DecodingConfig(gamma=7, max_new_tokens=max_new))
        assert capped.tokens == reference[:max_new]


def test_streaming_yields_the_collected_tokens(tiny_causal_lm, verifier):
    prompt_ids = torch.tensor([PROMPTS[2]])
    drafter = make_drafter(tiny_causal_lm, "diffusion", verifier, 1)
    config = DecodingConfig(gamma=3, max_new_tokens=20)
    streamed = [token for step in stream_generate(prompt_ids, verifier, drafter, config) for token in step.new_tokens]
    assert streamed == speculative_generate(prompt_ids, verifier, drafter, config).tokens


def test_a_reduced_draft_vocabulary_never_drafts_outside_it(tiny_causal_lm, verifier):
    drafter = make_drafter(tiny_causal_lm, "diffusion-vocab", verifier, 1)
    kept = drafter.vocab_size // 2
    drafter.start(PROMPTS[2])
    draft = drafter.draft(4, SamplingConfig(temperature=1.0), num_drafts=8, generator=torch.Generator().manual_seed(0))
    assert (draft.tokens < kept).all()
    assert draft.draft_probs[..., kept:].abs().sum() == 0
    torch.testing.assert_close(draft.draft_probs.sum(-1), torch.ones(8, 4))
