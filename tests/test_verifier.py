"""The verifier's parts on their own: the draft trie, and commit's cache surgery."""

import torch
from transformers import DynamicCache

from specdiff.kv_cache import cache_keyword
from specdiff.verifier import Verifier, build_trie


def test_trie_merges_shared_prefixes_breadth_first():
    candidates = torch.tensor([[9, 1, 2, 3],
                               [9, 1, 2, 4],
                               [9, 5, 2, 3]])
    trie = build_trie(candidates)
    # root, depth 1: 1, 5; depth 2: 2 (under 1), 2 (under 5); depth 3: 3, 4 (under 1-2), 3 (under 5-2)
    assert trie.tokens.tolist() == [9, 1, 5, 2, 2, 3, 4, 3]
    assert trie.depths.tolist() == [0, 1, 1, 2, 2, 3, 3, 3]
    assert trie.node_of.tolist() == [[0, 1, 3, 5], [0, 1, 3, 6], [0, 2, 4, 7]]
    assert trie.ancestors[6].nonzero().flatten().tolist() == [0, 1, 3, 6]  # itself and its path only
    assert trie.ancestors[7].nonzero().flatten().tolist() == [0, 2, 4, 7]
    assert not trie.is_chain and build_trie(candidates[:1]).is_chain


def test_identical_candidates_share_every_node():
    trie = build_trie(torch.tensor([[4, 7, 7], [4, 7, 7]]))
    assert trie.tokens.tolist() == [4, 7, 7] and trie.node_of.tolist() == [[0, 1, 2], [0, 1, 2]]


def test_commit_of_a_side_branch_leaves_the_cache_of_a_plain_pass(tiny_causal_lm):
    """Committing candidate 1 (not the trie's first path) gathers its nodes behind the
    prefix; the cache must then equal one built by running the same tokens plainly."""
    model = tiny_causal_lm("qwen2", seed=2)
    verifier = Verifier(model)
    verifier.prefill(torch.tensor([[3, 1, 4, 1]]))
    scored = verifier.score(torch.tensor([[1, 5, 9, 2], [1, 6, 9, 2]]))
    committed = verifier.commit(scored, candidate=1, num_accepted=2)
    assert committed.tokens == [1, 6, 9] and verifier.cached_length == 3 + 3
    reference = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([[3, 1, 4, 1, 6, 9]]), use_cache=True, **{cache_keyword(type(model)): reference})
    for ours, theirs in zip(verifier._cache.layers, reference.layers):
        assert torch.allclose(ours.keys, theirs.keys, atol=1e-5)
        assert torch.allclose(ours.values, theirs.values, atol=1e-5)


def test_commit_of_the_first_path_crops(tiny_causal_lm):
    model = tiny_causal_lm("qwen2", seed=2)
    verifier = Verifier(model)
    verifier.prefill(torch.tensor([[3, 1, 4, 1]]))
    committed = verifier.commit(verifier.score(torch.tensor([[1, 5, 9, 2]])), candidate=0, num_accepted=1)
    assert committed.tokens == [1, 5] and verifier.cached_length == 5
