"""Greedy self-selection keeps the drafter's argmax draft as candidate 0, so K > 1 never
drafts worse than K = 1; sampled verification never gets such non-i.i.d. candidates."""

import pytest
import torch

from specdiff.drafters import AutoregressiveDrafter
from specdiff.drafters.standalone.drafter import DiffusionDrafter
from specdiff.drafters.standalone.from_causal_lm import diffusion_lm_from_causal_lm
from specdiff.engine import DecodingConfig, speculative_generate
from specdiff.sampling import SamplingConfig, make_first_candidate_greedy
from specdiff.verifier import Verifier

HOT = SamplingConfig(temperature=5.0)  # hot enough that sampled rows rarely equal the argmax


def test_first_candidate_becomes_argmax_and_the_others_stay():
    tokens = torch.tensor([[3, 3], [1, 0], [2, 2]])  # [K=3, slots=2]
    probs = torch.full((3, 2, 4), 0.25)
    first_logits = torch.tensor([[0.0, 5.0, 1.0, 2.0], [9.0, 0.0, 0.0, 0.0]])
    new_tokens, new_probs = make_first_candidate_greedy(tokens, probs, first_logits)
    assert new_tokens.tolist() == [[1, 0], [1, 0], [2, 2]]
    assert new_probs[0].tolist() == [[0, 1, 0, 0], [1, 0, 0, 0]]
    assert torch.equal(new_probs[1:], probs[1:])
    assert tokens[0].tolist() == [3, 3]  # inputs untouched


def make(tiny_causal_lm, kind: str):
    if kind == "ar":
        return AutoregressiveDrafter(tiny_causal_lm("qwen2", seed=5))
    network = diffusion_lm_from_causal_lm(tiny_causal_lm("qwen2", seed=5))
    return DiffusionDrafter(network, steps=1 if kind == "diffusion-1-pass" else 3)


@pytest.mark.parametrize("kind", ["diffusion-1-pass", "diffusion-3-passes", "ar"])
def test_candidate_zero_is_the_single_greedy_draft(tiny_causal_lm, kind):
    drafter = make(tiny_causal_lm, kind)
    prefix = [4, 9, 2, 11]
    drafter.start(prefix)
    greedy = drafter.draft(6, SamplingConfig())
    drafter.start(prefix)
    drafts = drafter.draft(6, HOT, num_drafts=8, generator=torch.Generator().manual_seed(0), greedy_first=True)
    assert torch.equal(drafts.tokens[0], greedy.tokens[0])
    assert torch.equal(drafts.draft_probs[0], greedy.draft_probs[0])  # one-hot: what row 0 was drawn from
    assert any(not torch.equal(row, greedy.tokens[0]) for row in drafts.tokens[1:])  # the others are sampled
    drafter.start(prefix)
    plain = drafter.draft(6, HOT, num_drafts=8, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(plain.tokens[0], greedy.tokens[0])  # control: without the flag row 0 is a sample


class FlagSpy:
    """Wraps a drafter and records the greedy_first flag of every call."""

    feature_layers = ()

    def __init__(self, drafter):
        self.drafter, self.vocab_size, self.flags = drafter, drafter.vocab_size, []

    def start(self, prompt, features=None):
        self.drafter.start(prompt, features)

    def update(self, accepted):
        self.drafter.update(accepted)

    def draft(self, gamma, sampling, num_drafts=1, generator=None, greedy_first=False):
        self.flags.append(greedy_first)
        return self.drafter.draft(gamma, sampling, num_drafts, generator, greedy_first)


@pytest.mark.parametrize("verifier_temperature, num_drafts, argmax_candidate, expected", [
    (0.0, 4, True, True),
    (0.0, 4, False, False),
    (0.0, 1, True, False),
    (1.0, 4, True, False),  # sampled verification needs i.i.d. drafts
])
def test_engine_asks_for_argmax_candidate_only_under_greedy_verification(tiny_causal_lm,
        verifier_temperature, num_drafts, argmax_candidate, expected):
    spy = FlagSpy(make(tiny_causal_lm, "diffusion-1-pass"))
    config = DecodingConfig(gamma=3, num_drafts=num_drafts, max_new_tokens=8, draft_sampling=HOT,
                            sampling=SamplingConfig(temperature=verifier_temperature), argmax_candidate=argmax_candidate)
    speculative_generate(torch.tensor([[1, 2, 3]]), Verifier(tiny_causal_lm("llama", seed=0)), spy, config)
    assert spy.flags and set(spy.flags) == {expected}
