"""Tree drafting: suffix matching (vLLM's n-gram proposer cases), the suffix index, ragged
rows through the trie and both acceptance rules, the node-selection policy, and greedy
equality of the whole tree path on tiny models."""

import numpy as np
import pytest
import torch

from specdiff import (
    AutoregressiveDrafter,
    DecodingConfig,
    DiffusionDrafter,
    Verifier,
    autoregressive_generate,
    speculative_generate,
)
from specdiff.acceptance import greedy_accept, rejection_accept
from specdiff.drafters.standalone.from_causal_lm import diffusion_lm_from_causal_lm
from specdiff.tree.build import build_tree_drafter
from specdiff.tree.config import TreeConfig
from specdiff.tree.costs import VerifyCosts
from specdiff.tree.estimates import AcceptanceEstimates
from specdiff.tree.matching import longest_suffix_matches, merge_continuations
from specdiff.tree.policy import select_nodes
from specdiff.tree.sources import Branch
from specdiff.tree.suffix_index import SuffixIndex
from specdiff.verifier import build_trie

# vLLM's n-gram proposer test cases (tests/v1/spec_decode/test_ngram.py): tokens, min_n,
# max_n, k, vLLM's proposal (None: no match). vLLM proposes the continuation of the earliest
# occurrence of the longest matching n-gram: our first match.
VLLM_NGRAM_CASES = [
    ([1, 2, 3, 4, 1, 2, 3, 5, 6], 2, 2, 2, None),
    ([1, 2, 3, 4, 1, 2, 3], 2, 2, 3, [4, 1, 2]),
    ([1, 2, 3, 4, 1, 2, 3], 2, 2, 2, [4, 1]),
    ([1, 2, 3, 4, 1, 2, 3], 1, 1, 3, [4, 1, 2]),
    ([1, 2, 3, 4, 1, 2, 3], 1, 1, 2, [4, 1]),
    ([1, 3, 6, 2, 3, 4, 1, 2, 3], 2, 2, 3, [4, 1, 2]),
    ([1, 3, 6, 2, 3, 4, 1, 2, 3], 1, 1, 2, [6, 2]),
    ([1, 2, 3, 4, 5], 2, 2, 2, None),
    ([1, 2, 3, 4, 1, 2, 3], 4, 4, 2, None),
    ([1, 2, 3, 4, 1, 2, 3], 3, 4, 2, [4, 1]),
    ([2, 3, 4, 5, 1, 2, 3, 4, 1, 2, 3, 4], 3, 4, 2, [1, 2]),
    ([3, 4, 5, 2, 3, 4, 1, 2, 3, 4], 2, 4, 2, [1, 2]),
    ([1, 2, 3, 100, 1, 2, 3, 200, 1, 2, 3, 300, 1, 2, 3], 3, 3, 2, [100, 1]),
]


@pytest.mark.parametrize("tokens, min_n, max_n, k, expected", VLLM_NGRAM_CASES)
def test_context_lookup_agrees_with_vllm_ngram_proposer(tokens, min_n, max_n, k, expected):
    tokens = np.array(tokens)
    ngram, starts = longest_suffix_matches(tokens, min_n, max_n)
    if expected is None:
        assert ngram == 0 and len(starts) == 0
        return
    assert tokens[starts[0]:starts[0] + k].tolist() == expected
    index = SuffixIndex(max_n)  # the same search through the index, over the sequence less its suffix
    index.add([tokens.tolist()])
    indexed_ngram, indexed = index.matches(tokens.tolist(), min_n, max_n)
    assert indexed_ngram == ngram and index.continuation(int(indexed[0]), k) == expected


def brute_force_suffix_matches(tokens: list[int], min_n: int, max_n: int) -> tuple[int, list[int]]:
    for n in range(min(max_n, len(tokens) - 1), min_n - 1, -1):
        suffix = tokens[len(tokens) - n:]
        starts = [end + 1 for end in range(n - 1, len(tokens) - 1) if tokens[end + 1 - n:end + 1] == suffix]
        if starts:
            return n, starts
    return 0, []


def test_suffix_matches_agree_with_brute_force_for_long_ngrams():
    generator = np.random.default_rng(1)
    for trial in range(300):
        alphabet = int(generator.integers(2, 6))
        tokens = generator.integers(0, alphabet, size=int(generator.integers(1, 60))).tolist()
        if trial % 3 == 0:  # a copied stretch: long matches
            tokens = tokens + tokens[: int(generator.integers(1, len(tokens) + 1))]
        min_n, max_n = int(generator.integers(1, 4)), int(generator.integers(4, 40))
        ngram, starts = longest_suffix_matches(np.array(tokens), min_n, max_n)
        assert (ngram, starts.tolist()) == brute_force_suffix_matches(tokens, min_n, max_n), tokens


def test_every_match_is_kept_and_merged_with_counts():
    tokens = np.array([1, 2, 3, 100, 1, 2, 3, 200, 1, 2, 3, 100, 1, 2, 3])
    ngram, starts = longest_suffix_matches(tokens, 1, 3)
    assert ngram == 3 and starts.tolist() == [3, 7, 11]
    branches = merge_continuations([tokens[s:s + 2].tolist() for s in starts], max_branches=4)
    assert [b.tokens for b in branches] == [[100, 1], [200, 1]]
    assert branches[0].shares == [2 / 3, 1.0] and branches[0].count == 2


@pytest.mark.parametrize("alphabet, max_ngram", [(5, 4), (3, 10)])
def test_suffix_index_finds_what_brute_force_finds(alphabet, max_ngram):
    generator = np.random.default_rng(0)
    documents = [generator.integers(0, alphabet, size=int(generator.integers(1, 40))).tolist() for _ in range(30)]
    index = SuffixIndex(max_ngram=max_ngram)
    index.add(documents[:20])
    index.add(documents[20:])  # added later, as earlier outputs are
    assert index.documents == 30 and index.num_tokens == sum(map(len, documents))
    for _ in range(200):
        context = generator.integers(0, alphabet, size=int(generator.integers(1, 2 * max_ngram))).tolist()
        ngram, starts = index.matches(context, 1, max_ngram)
        found = {(d, i + len(context[-ngram:])) for d, doc in enumerate(documents)
                 for i in range(len(doc) - ngram) if ngram and doc[i:i + ngram] == context[-ngram:]}
        def occurs(n, context=context):
            return any(doc[i:i + n] == context[-n:] for doc in documents for i in range(len(doc) - n))

        expected_ngram = next((n for n in range(min(max_ngram, len(context)), 0, -1) if occurs(n)), 0)
        assert ngram == expected_ngram and len(starts) == len(found)
        for start in starts:  # every hit is followed by a token of its own document
            assert index.continuation(int(start), 1)


def test_ragged_rows_share_the_trie_and_stop_where_they_end():
    candidates = torch.tensor([[9, 1, 2, 3], [9, 1, 5, 0], [9, 4, 0, 0]])
    trie = build_trie(candidates, torch.tensor([3, 2, 1]))
    assert trie.tokens.tolist() == [9, 1, 4, 2, 5, 3]
    assert trie.node_of.tolist() == [[0, 1, 3, 5], [0, 1, 4, 4], [0, 2, 2, 2]]
    vocab = 6
    logits = torch.zeros(3, 4, vocab)
    logits[:, 0, 1] = logits[:, 1, 5] = logits[:, 2, 3] = 1.0  # the verifier wants 1, 5, then 3
    accepted = greedy_accept(candidates[:, 1:], logits, torch.tensor([3, 2, 1]))
    assert (accepted.candidate, accepted.num_accepted, accepted.next_token) == (1, 2, 3)
    # without lengths, row 1's padding 0 would be compared; with them it ends at 2 tokens
    probs = torch.nn.functional.one_hot(logits.argmax(-1), vocab).float()
    draft_probs = torch.nn.functional.one_hot(candidates[:, 1:], vocab).float()
    sampled = rejection_accept(candidates[:, 1:], draft_probs, probs, torch.Generator().manual_seed(0),
                               torch.tensor([3, 2, 1]))
    assert (sampled.candidate, sampled.num_accepted, sampled.next_token) == (1, 2, 3)


def branch(tokens, acceptance, source="lookup"):
    return Branch(source, tokens, [(source, j) for j in range(len(tokens))], [acceptance] * len(tokens))


def test_policy_sizes_the_tree_by_what_verification_costs():
    branches = [branch([1, 2, 3, 4], 0.9), branch([7, 8], 0.3)]
    acceptance = [[0.9] * 4, [0.3] * 2]
    flat = VerifyCosts({1: 1.0, 32: 1.0})
    chosen = select_nodes(branches, acceptance, flat, 0.0, max_nodes=16, merge=True)
    assert chosen.lengths == [4, 2] and chosen.nodes == 6  # every node is free
    steep = VerifyCosts({1: 1.0, 2: 2.0, 32: 32.0})  # each token costs a full pass: nothing pays
    assert select_nodes(branches, acceptance, steep, 0.0, max_nodes=16, merge=True).nodes == 0
    mild = VerifyCosts({1: 1.0, 5: 1.2, 7: 2.0})
    chosen = select_nodes(branches, acceptance, mild, 0.0, max_nodes=16, merge=True)
    assert chosen.lengths == [4, 0]  # the likely branch only
    assert chosen.expected_tokens == pytest.approx(1 + 0.9 + 0.81 + 0.729 + 0.6561)


def test_shared_prefixes_cost_once_only_when_merging():
    branches = [branch([1, 2], 0.9), branch([1, 3], 0.9)]
    acceptance = [[0.9, 0.5], [0.9, 0.4]]
    costs = VerifyCosts({1: 1.0, 4: 1.0})
    merged = select_nodes(branches, acceptance, costs, 0.0, max_nodes=3, merge=True)
    assert merged.nodes == 3 and merged.lengths == [2, 2]
    apart = select_nodes(branches, acceptance, costs, 0.0, max_nodes=3, merge=False)
    assert apart.nodes == 3 and sorted(apart.lengths) == [1, 2]


def test_disagreeing_branches_never_expect_more_than_one_token_in_a_slot():
    """Two sources proposing different next tokens, each estimated at 0.8 on its own: at most
    one is accepted, so the step expects at most 2 tokens, and the second branch is worth the
    0.2 left, which a pass of 3 tokens at this price does not pay for."""
    branches = [branch([5, 6], 0.8, "lookup"), branch([7, 8], 0.8, "suffix")]
    acceptance = [[0.8, 0.0], [0.8, 0.0]]
    costs = VerifyCosts({1: 1.0, 2: 1.4, 3: 1.9})
    chosen = select_nodes(branches, acceptance, costs, 0.0, max_nodes=4, merge=True)
    assert chosen.lengths == [1, 0] and chosen.expected_tokens == pytest.approx(1.8)
    both = select_nodes(branches, acceptance, VerifyCosts({1: 1.0, 4: 1.0}), 0.0, max_nodes=4, merge=True)
    assert both.expected_tokens <= 2.0 + 1e-9


def test_estimates_learn_from_outcomes():
    estimates = AcceptanceEstimates(prior_weight=4.0)
    key = ("lookup", 0, 2, 1.0)
    assert estimates.estimate(key, 0.5) == 0.5
    for _ in range(12):
        estimates.record(key, 0, False)
    assert estimates.estimate(key, 0.5) == pytest.approx(2 / 16)
    assert estimates.table() == {"lookup": {"depth 0": 0.0}}


@pytest.fixture(scope="module")
def verifier(tiny_causal_lm):
    return Verifier(tiny_causal_lm("llama", seed=0, logit_scale=30.0))


@pytest.mark.parametrize("sources", ["lookup,suffix,diffusion", "lookup", "suffix,diffusion", "lookup,diffusion"])
@pytest.mark.parametrize("model", ["diffusion", "ar"])
def test_tree_greedy_equals_plain_greedy(tiny_causal_lm, verifier, sources, model):
    base = tiny_causal_lm("qwen2", seed=1, logit_scale=30.0)
    drafter = AutoregressiveDrafter(base) if model == "ar" else DiffusionDrafter(diffusion_lm_from_causal_lm(base))
    costs = VerifyCosts({1: 1.0, 8: 1.1, 32: 3.0})
    tree = build_tree_drafter(TreeConfig(sources=sources, max_nodes=12), verifier, drafter, costs=costs)
    kinds = set()
    for prompt in ([1, 2, 3, 4, 5, 1, 2, 3], [7], [30, 2, 2, 2, 9, 14, 3, 3, 0, 1, 20]):
        config = DecodingConfig(gamma=3, max_new_tokens=40)
        reference = autoregressive_generate(torch.tensor([prompt]), verifier, config)
        result = speculative_generate(torch.tensor([prompt]), verifier, tree, config)
        assert result.tokens == reference.tokens
        kinds |= {step.source for step in result.steps if step.source}
        assert all(step.nodes <= 13 for step in result.steps)
    assert kinds <= set(sources.split(",")) and kinds  # accepted tokens came from the named sources


def test_tree_config_refusals():
    with pytest.raises(ValueError, match="--sources takes"):
        TreeConfig(sources="lookup,ngram")
    with pytest.raises(ValueError, match="add 'suffix'"):
        TreeConfig(sources="lookup", datastore="x")
    with pytest.raises(ValueError, match="--tree-max-ngram"):
        TreeConfig(min_ngram=3, max_ngram=2)


def test_tree_statistics_from_records():
    from specdiff.bench.tree_report import tree_statistics

    plan = {"choice": "hybrid", "branches": [{"source": "lookup", "tokens": [5, 6, 7]},
                                             {"source": "diffusion", "tokens": [5, 9]}]}
    record = {"method": "specdiff", "token_ids": [5, 6, 1, 4], "accepted_lengths": [3, 1], "plans": [plan, None],
              "sources": ["lookup", ""], "nodes": [5, 1], "step_verify_seconds": [0.5, 0.25]}
    stats = tree_statistics([record, {"method": "ar", "plans": None}])["specdiff"]
    assert stats["tau"] == 2.0
    assert stats["acceptance_by_source_and_depth"] == {
        "diffusion": {0: {"reached": 1, "rate": 1.0}, 1: {"reached": 1, "rate": 0.0}},
        "lookup": {0: {"reached": 1, "rate": 1.0}, 1: {"reached": 1, "rate": 1.0}, 2: {"reached": 1, "rate": 0.0}}}
    assert stats["accepted_draft_tokens_by_source"] == {"lookup": 2}
    assert stats["verify_seconds_by_nodes"] == {1: {"calls": 1, "mean_s": 0.25}, 5: {"calls": 1, "mean_s": 0.5}}


class TimedDrafter:
    """Stands in for a drafter whose next call takes ``delay`` seconds of a fake clock (the
    source's ``time.perf_counter``), so the check cannot flake on a loaded machine."""

    vocab_size, feature_layers, delay = 8, (), 0.0

    def __init__(self):
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def start(self, prompt, features=None):
        pass

    def update(self, accepted):
        pass

    def draft(self, gamma, sampling, num_drafts=1, generator=None, greedy_first=False):
        from specdiff import Draft

        self.now += self.delay
        return Draft(torch.zeros(num_drafts, gamma, dtype=torch.long), torch.full((num_drafts, gamma, 8), 1 / 8))


def test_a_catch_up_call_does_not_price_the_drafter_out(monkeypatch):
    from types import SimpleNamespace

    from specdiff import SamplingConfig
    from specdiff.tree import sources
    from specdiff.tree.sources import ModelSource

    drafter = TimedDrafter()
    monkeypatch.setattr(sources, "time", SimpleNamespace(perf_counter=drafter.clock))
    source = ModelSource(drafter, steady_tokens=11)
    source.start(list(range(200)))
    drafter.delay = 0.2  # the first call runs over the whole prompt
    source.propose(200, 2, SamplingConfig(), 1, None, False)
    assert source.seconds is None
    drafter.delay = 0.01
    source.propose(203, 2, SamplingConfig(), 1, None, False)  # three tokens later: a steady call
    assert source.seconds == pytest.approx(0.01)
    drafter.delay = 0.2
    source.propose(303, 2, SamplingConfig(), 1, None, False)  # after 100 tokens it sat out: left out
    assert source.seconds == pytest.approx(0.01)


def test_the_cost_table_learns_from_passes():
    costs = VerifyCosts({1: 0.2, 4: 0.3})
    costs.record(4, 0.5)
    assert costs.table[4] == pytest.approx(0.32)
    costs.record(8, 0.6)  # a size not measured before joins the table
    assert costs.seconds(6) == pytest.approx(0.46)
    placeholder = VerifyCosts({1: 1.0}, prior=True)
    placeholder.record(5, 0.05)  # the first observation replaces a placeholder
    assert placeholder.table == {5: 0.05} and placeholder.seconds(1) == placeholder.seconds(9) == 0.05
