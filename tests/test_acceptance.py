"""Hand-built distributions with exact expected outcomes."""

import torch

from specdiff.acceptance import greedy_accept, rejection_accept, residual_distribution

VOCAB = 6


def one_hot(tokens):
    return torch.nn.functional.one_hot(torch.tensor(tokens), VOCAB).float()


def logits_preferring(tokens):
    return one_hot(tokens) * 10.0


def test_greedy_accepts_matching_prefix_then_verifier_token():
    draft = torch.tensor([[1, 2, 3, 4]])
    target = logits_preferring([[1, 2, 5, 4, 0]])
    result = greedy_accept(draft, target)
    assert (result.candidate, result.num_accepted, result.next_token) == (0, 2, 5)


def test_greedy_all_accepted_gives_bonus():
    draft = torch.tensor([[1, 2, 3]])
    result = greedy_accept(draft, logits_preferring([[1, 2, 3, 4]]))
    assert (result.num_accepted, result.next_token) == (3, 4)


def test_greedy_picks_longest_candidate():
    draft = torch.tensor([[1, 0, 0], [1, 2, 0], [5, 2, 3]])
    target = torch.stack([
        logits_preferring([1, 2, 3, 4]), logits_preferring([1, 2, 3, 4]), logits_preferring([1, 2, 3, 4]),
    ])
    result = greedy_accept(draft, target)
    assert (result.candidate, result.num_accepted, result.next_token) == (1, 2, 3)


def test_rejection_accepts_when_target_dominates():
    # p(x) >= q(x) at every draft token: every draft token is accepted, then a bonus from p_{gamma+1}.
    draft = torch.tensor([[1, 2]])
    draft_probs = torch.full((1, 2, VOCAB), 1 / VOCAB)
    target_probs = one_hot([[1, 2, 4]])
    result = rejection_accept(draft, draft_probs, target_probs, torch.Generator().manual_seed(0))
    assert (result.num_accepted, result.next_token) == (2, 4)


def test_rejection_rejects_where_target_has_no_mass_and_samples_residual():
    draft = torch.tensor([[1, 2, 3]])
    draft_probs = one_hot([[1, 2, 3]])
    # p puts no mass on the second draft token: always rejected there; the residual
    # norm(max(p - q, 0)) is p's mass outside token 2, all on token 4.
    target_probs = one_hot([[1, 4, 0, 0]])
    for seed in range(20):
        result = rejection_accept(draft, draft_probs, target_probs, torch.Generator().manual_seed(seed))
        assert (result.num_accepted, result.next_token) == (1, 4)


def test_residual_is_normalised_positive_part():
    target = torch.tensor([0.5, 0.3, 0.2])
    draft = torch.tensor([0.2, 0.6, 0.2])
    assert torch.allclose(residual_distribution(target, draft), torch.tensor([1.0, 0.0, 0.0]))


def test_multi_draft_tries_next_candidate_after_rejection():
    # Candidate 0 proposes a token p gives no mass; candidate 1 proposes p's only token.
    draft = torch.tensor([[3, 0], [1, 2]])
    draft_probs = 0.5 * one_hot([[3, 0], [3, 0]]) + 0.5 * one_hot([[1, 2], [1, 2]])
    target_probs = one_hot([[1, 2, 5], [1, 2, 5]])
    result = rejection_accept(draft, draft_probs, target_probs, torch.Generator().manual_seed(0))
    assert (result.candidate, result.num_accepted, result.next_token) == (1, 2, 5)


def test_multi_draft_all_rejected_samples_final_residual():
    draft = torch.tensor([[3], [4]])
    draft_probs = 0.5 * one_hot([[3], [3]]) + 0.5 * one_hot([[4], [4]])
    target_probs = one_hot([[0, 5], [0, 5]])
    result = rejection_accept(draft, draft_probs, target_probs, torch.Generator().manual_seed(0))
    assert (result.num_accepted, result.next_token) == (0, 0)
