"""Sampling is lossless: the empirical distribution of generated sequences matches the
verifier's exact sequence distribution; deliberately broken variants must fail the check.

Tiny vocabulary (3 tokens, token 2 = EOS), 3 new tokens: 15 possible continuations,
whose exact probabilities are enumerated from the verifier. At NUM_SAMPLES = 3000 an
honest sampler's expected TV distance is about 0.025; TV_BOUND = 0.06.
"""

import dataclasses
from pathlib import Path

import pytest
import torch
from exact import distribution_tv, expected_sampling_tv, sequence_distribution, total_variation

from specdiff import AutoregressiveDrafter, DecodingConfig, DiffusionDrafter, Draft, SamplingConfig, Verifier, engine
from specdiff.acceptance import Acceptance
from specdiff.drafters.standalone.from_causal_lm import diffusion_lm_from_causal_lm
from specdiff.linear_kernels import first_rows, quantize_linears

NUM_SAMPLES = 3000
TV_BOUND = 0.06
PROMPT = [0, 1]
EOS = 2
MAX_NEW = 3
SAMPLING = SamplingConfig(temperature=1.0)


@pytest.fixture(scope="module")
def verifier(tiny_causal_lm):
    return Verifier(tiny_causal_lm("llama", seed=0, vocab=3, logit_scale=2.0))


@pytest.fixture(scope="module")
def draft_base(tiny_causal_lm):
    return tiny_causal_lm("qwen2", seed=1, vocab=3, logit_scale=2.0)


@pytest.fixture(scope="module")
def exact(verifier):
    return sequence_distribution(verifier.model, PROMPT, MAX_NEW, SAMPLING, EOS)


def sample_sequences(verifier, drafter, config: DecodingConfig) -> list[tuple[int, ...]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threading overhead dominates
    prompt_ids = torch.tensor([PROMPT])
    samples = []
    try:
        for seed in range(NUM_SAMPLES):
            run = dataclasses.replace(config, max_new_tokens=MAX_NEW, seed=seed)
            samples.append(tuple(engine.generate(prompt_ids, verifier, drafter, run, {EOS}).tokens))
    finally:
        torch.set_num_threads(threads)
    return samples


def test_the_check_has_power(exact, draft_base):
    """The drafter's own distribution is far from the verifier's, and the bound is well above noise."""
    assert distribution_tv(exact, sequence_distribution(draft_base, PROMPT, MAX_NEW, SAMPLING, EOS)) > 0.4
    assert expected_sampling_tv(exact, NUM_SAMPLES) < TV_BOUND / 2


@pytest.mark.parametrize("name, steps, num_drafts, draft_temperature", [
    pytest.param("plain", None, 1, None, marks=pytest.mark.heavy),
    ("autoregressive", None, 1, None),
    ("diffusion one pass", 1, 1, None),
    pytest.param("diffusion two steps left to right", 2, 1, None, marks=pytest.mark.heavy),
    pytest.param("diffusion K=3 drafts", 1, 3, 1.5, marks=pytest.mark.heavy),
    pytest.param("diffusion, int8 weights, draft vocabulary of 2", 1, 1, None, marks=pytest.mark.heavy),
])
def test_speculative_sampling_matches_verifier(verifier, draft_base, exact, name, steps, num_drafts, draft_temperature):
    if name == "plain":
        drafter = None
    elif steps is None:
        drafter = AutoregressiveDrafter(draft_base)
    else:
        drafter = DiffusionDrafter(diffusion_lm_from_causal_lm(draft_base), steps=steps)
        if "int8" in name:  # what --drafter-weights int8 --drafter-vocab 2 do
            drafter.network.lm_head = first_rows(drafter.network.lm_head, 2)
            quantize_linears(drafter.network)
    draft_sampling = SamplingConfig(temperature=draft_temperature) if draft_temperature else None
    config = DecodingConfig(gamma=2, num_drafts=num_drafts, sampling=SAMPLING, draft_sampling=draft_sampling)
    tv = total_variation(exact, sample_sequences(verifier, drafter, config))
    print(f"{name}: TV {tv:.4f} (bound {TV_BOUND})")
    assert tv < TV_BOUND, f"{name}: TV {tv:.3f} >= {TV_BOUND}"


@pytest.mark.parametrize("name, draft_sampling, num_drafts", [
    ("conditioned argmax drafts", SamplingConfig(), 1),
    pytest.param("conditioned sampled drafts", None, 1, marks=pytest.mark.heavy),
    pytest.param("conditioned K=2 sampled drafts", SamplingConfig(temperature=1.5), 2, marks=pytest.mark.heavy),
])
def test_conditioned_drafter_sampling_matches_verifier(verifier, exact, name, draft_sampling, num_drafts):
    from specdiff.drafters.conditioned.drafter import ConditionedDrafter
    from specdiff.drafters.conditioned.network import DFlashNetwork, dflash_config

    torch.manual_seed(2)
    network = DFlashNetwork(dflash_config(verifier.model.config, 1, 4, [0, 1]), separate_mask_embedding=True)
    torch.nn.init.normal_(network.mask_embedding)
    drafter = ConditionedDrafter(network.eval(), verifier.model)
    config = DecodingConfig(gamma=2, num_drafts=num_drafts, sampling=SAMPLING, draft_sampling=draft_sampling)
    tv = total_variation(exact, sample_sequences(verifier, drafter, config))
    print(f"{name}: TV {tv:.4f} (bound {TV_BOUND})")
    assert tv < TV_BOUND, f"{name}: TV {tv:.3f} >= {TV_BOUND}"


@pytest.mark.parametrize("name, prefix, num_drafts, top_k", [
    # the exact prefix mode passed too (TV 0.027); greedy equality covers it in test_dream_drafter.py
    ("Dream fixture, approximate prefix, K=2, draft top-k 2", "approximate", 2, 2),
])
def test_dream_drafter_sampling_matches_verifier(verifier, exact, name, prefix, num_drafts, top_k):
    """A published-architecture drafter (tests/fixtures/dream, Dream's own weights layout) on the
    3-token verifier: its 48-row head is cut to the verifier's vocabulary."""
    from specdiff.drafters.standalone.dream import load_dream

    network, _ = load_dream(str(Path(__file__).parent / "fixtures" / "dream" / "dream-tiny-gqa"))
    drafter = DiffusionDrafter(network, vocab_size=3, prefix=prefix, prefix_refresh=2)
    draft_sampling = SamplingConfig(temperature=1.0, top_k=top_k)
    config = DecodingConfig(gamma=2, num_drafts=num_drafts, sampling=SAMPLING, draft_sampling=draft_sampling)
    tv = total_variation(exact, sample_sequences(verifier, drafter, config))
    print(f"{name}: TV {tv:.4f} (bound {TV_BOUND})")
    assert tv < TV_BOUND, f"{name}: TV {tv:.3f} >= {TV_BOUND}"


def test_always_accept_rule_fails_the_check(verifier, draft_base, exact, monkeypatch):
    def always_accept(draft_tokens, draft_probs, target_probs, generator, lengths=None):
        gamma = draft_tokens.shape[1]
        bonus = int(torch.multinomial(target_probs[0, gamma], 1, generator=generator))
        return Acceptance(0, gamma, bonus)

    monkeypatch.setattr(engine, "rejection_accept", always_accept)
    drafter = DiffusionDrafter(diffusion_lm_from_causal_lm(draft_base))
    tv = total_variation(exact, sample_sequences(verifier, drafter, DecodingConfig(gamma=2, sampling=SAMPLING)))
    print(f"negative control: TV {tv:.4f} (bound {TV_BOUND})")
    assert tv > TV_BOUND, f"negative control passed the check: TV {tv:.3f}"


class RightToLeftDrafter:
    """Reveals slot 2 first, then draws slot 1 copying slot 2 with probability 0.9, and
    reports the distributions the tokens were drawn from. Slot 1's distribution thus
    depends on a token to its RIGHT: the order the library refuses to offer."""

    vocab_size = 3
    feature_layers = ()

    def start(self, prompt, features=None):
        pass

    def update(self, accepted):
        pass

    def draft(self, gamma, sampling, num_drafts=1, generator=None, greedy_first=False):
        uniform = torch.full((self.vocab_size,), 1 / self.vocab_size)
        probs = torch.zeros(gamma, self.vocab_size)
        tokens = torch.zeros(gamma, dtype=torch.long)
        for slot in reversed(range(gamma)):
            if slot == gamma - 1:
                probs[slot] = uniform
            else:
                probs[slot] = 0.9 * torch.nn.functional.one_hot(tokens[slot + 1], self.vocab_size) + 0.1 * uniform
            tokens[slot] = torch.multinomial(probs[slot], 1, generator=generator)
        return Draft(tokens=tokens[None], draft_probs=probs[None])


@pytest.mark.heavy
def test_out_of_order_drafter_fails_the_check(verifier, exact):
    tv = total_variation(exact, sample_sequences(verifier, RightToLeftDrafter(), DecodingConfig(gamma=2, sampling=SAMPLING)))
    print(f"negative control: TV {tv:.4f} (bound {TV_BOUND})")
    assert tv > TV_BOUND, f"negative control passed the check: TV {tv:.3f}"


@pytest.mark.heavy
def test_best_draft_then_single_draft_rejection_fails_the_check(verifier, draft_base, exact, monkeypatch):
    """Self-selection done wrong: score the K drafts with the verifier, keep the best,
    then run single-draft rejection sampling on it. Not lossless, and the check sees it."""
    from specdiff.acceptance import rejection_accept

    def pick_best_then_single(draft_tokens, draft_probs, target_probs, generator, lengths=None):
        gamma = draft_tokens.shape[1]
        if gamma == 0:  # a plain verifier step at the end of generation
            return rejection_accept(draft_tokens, draft_probs, target_probs, generator)
        token_probs = target_probs[:, :gamma].gather(-1, draft_tokens[..., None])[..., 0]  # [K, gamma]
        scores = token_probs.cumprod(-1).sum(-1)  # the paper's streak score
        best = int(scores.argmax())
        chosen = rejection_accept(draft_tokens[best:best + 1], draft_probs[best:best + 1],
                                  target_probs[best:best + 1], generator)
        return Acceptance(best, chosen.num_accepted, chosen.next_token)

    monkeypatch.setattr(engine, "rejection_accept", pick_best_then_single)
    drafter = DiffusionDrafter(diffusion_lm_from_causal_lm(draft_base))
    config = DecodingConfig(gamma=2, num_drafts=3, sampling=SAMPLING, draft_sampling=SamplingConfig(temperature=1.5))
    tv = total_variation(exact, sample_sequences(verifier, drafter, config))
    print(f"negative control (best-of-K then single-draft rejection): TV {tv:.4f} (bound {TV_BOUND})")
    assert tv > TV_BOUND, f"negative control passed the check: TV {tv:.3f}"


class FlatCosts:
    """Every pass costs the same and stays so (timed passes are not folded in)."""

    table = {1: 1.0}

    def seconds(self, tokens: int) -> float:
        return 1.0

    def record(self, tokens: int, seconds: float) -> None:
        pass


def mixed_source_drafter(verifier, draft_base, sources: str):
    """A tree of lookup, suffix-index and sampled diffusion rows; a flat verify cost makes the
    policy admit as many nodes as it can, so every kind of row is verified together."""
    from specdiff.tree.build import build_tree_drafter
    from specdiff.tree.config import TreeConfig
    drafter = DiffusionDrafter(diffusion_lm_from_causal_lm(draft_base))
    config = TreeConfig(sources=sources, max_depth=3, max_nodes=8, max_branches=3)
    return build_tree_drafter(config, verifier, drafter, costs=FlatCosts())


def sources_verified_together(verifier, tree, config) -> set[str]:
    """The sources of the rows verified in the same pass, over 100 seeded runs."""
    seen = set()
    for seed in range(100):
        run = dataclasses.replace(config, max_new_tokens=MAX_NEW, seed=seed)
        for step in engine.stream_generate(torch.tensor([PROMPT]), verifier, tree, run, {EOS}):
            rows = {branch["source"] for branch in (step.plan or {}).get("branches", [])}
            if len(rows) > 1:
                seen |= rows
    return seen


@pytest.mark.parametrize("sources, num_drafts, draft_temperature", [
    ("lookup,suffix,diffusion", 2, 1.5),
    pytest.param("lookup,diffusion", 1, None, marks=pytest.mark.heavy),
    pytest.param("lookup,suffix", 1, None, marks=pytest.mark.heavy),
])
def test_mixed_source_tree_sampling_matches_verifier(verifier, draft_base, exact, sources, num_drafts,
                                                     draft_temperature):
    tree = mixed_source_drafter(verifier, draft_base, sources)
    draft_sampling = SamplingConfig(temperature=draft_temperature) if draft_temperature else None
    config = DecodingConfig(gamma=2, num_drafts=num_drafts, sampling=SAMPLING, draft_sampling=draft_sampling)
    assert sources_verified_together(verifier, tree, config) == set(sources.split(","))
    tv = total_variation(exact, sample_sequences(verifier, tree, config))
    print(f"tree of {sources}: TV {tv:.4f} (bound {TV_BOUND})")
    assert tv < TV_BOUND, f"{sources}: TV {tv:.3f} >= {TV_BOUND}"


class FixedRowDrafter:
    """A sampled diffusion draft plus a deterministic row (a datastore continuation that is
    always ``row``), tried first. With ``only_if_it_agrees`` the row is admitted only when its
    first token equals the sampled draft's, so whether it exists depends on another row's
    sampled token: broken on purpose. Admitted always, it is an honest mixed tree."""

    feature_layers = ()

    def __init__(self, diffusion, row: list[int], only_if_it_agrees: bool):
        self.diffusion, self.vocab_size = diffusion, diffusion.vocab_size
        self.row, self.only_if_it_agrees = row, only_if_it_agrees

    def start(self, prompt, features=None):
        self.diffusion.start(prompt, features)

    def update(self, accepted):
        self.diffusion.update(accepted)

    def draft(self, gamma, sampling, num_drafts=1, generator=None, greedy_first=False):
        sampled = self.diffusion.draft(gamma, sampling, 1, generator)
        fixed = torch.tensor(self.row[:gamma])
        if self.only_if_it_agrees and int(fixed[0]) != int(sampled.tokens[0, 0]):
            return sampled
        tokens = torch.stack([torch.nn.functional.pad(fixed, (0, gamma - len(fixed))), sampled.tokens[0]])
        probs = torch.cat([torch.nn.functional.one_hot(tokens[:1], self.vocab_size).float(), sampled.draft_probs])
        return Draft(tokens, probs, lengths=torch.tensor([len(fixed), gamma]), sources=("suffix", "diffusion"))


@pytest.mark.heavy
@pytest.mark.parametrize("only_if_it_agrees", [False, True])
def test_a_row_admitted_only_when_it_agrees_fails_the_check(verifier, draft_base, exact, only_if_it_agrees):
    drafter = FixedRowDrafter(DiffusionDrafter(diffusion_lm_from_causal_lm(draft_base)), [1, 1], only_if_it_agrees)
    tv = total_variation(exact, sample_sequences(verifier, drafter, DecodingConfig(gamma=2, sampling=SAMPLING)))
    print(f"fixed row admitted {'only when it agrees' if only_if_it_agrees else 'always'}: TV {tv:.4f}")
    if only_if_it_agrees:  # the negative control
        assert tv > TV_BOUND, f"negative control passed the check: TV {tv:.3f}"
    else:
        assert tv < TV_BOUND, f"an honest mixed tree failed the check: TV {tv:.3f}"
