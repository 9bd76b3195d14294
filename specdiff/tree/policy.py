"""Which draft nodes to verify: the tree with the most expected committed tokens per second.

A node's probability of being on the accepted path is the product of its own and its
ancestors' acceptance estimates (P(accepted | parent accepted)). The expected tokens of a
step are 1 (the verifier's own) plus the sum of those probabilities over the tree's nodes;
its time is the verify cost of (1 + nodes) tokens plus the draft calls made. Nodes are
admitted best first (a child never beats its parent, so every prefix of that order is a
tree) and the size with the best ratio wins; zero nodes is a plain step.

With ``merge`` (greedy verification only) branches that share a prefix share its nodes,
which then cost nothing twice, and the children of one node, being exclusive (at most one is
the verifier's next token), share their parent's probability: sources calibrated apart can
each claim 0.8 for different tokens, which would count 1.6 tokens where at most one lands. Under sampled verification each branch is accounted alone,
so no row's length ever depends on another row's sampled tokens (see ``rejection_accept``).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from specdiff.tree.costs import VerifyCosts
from specdiff.tree.estimates import AcceptanceEstimates
from specdiff.tree.sources import Branch


@dataclass(frozen=True)
class Selection:
    lengths: list[int]  # tokens kept of each branch (0: left out)
    nodes: int  # distinct draft nodes verified
    expected_tokens: float  # committed tokens expected, the verifier's own included
    seconds: float  # estimated step time: verify pass plus draft calls

    @property
    def tokens_per_second(self) -> float:
        return self.expected_tokens / self.seconds


def select_nodes(branches: list[Branch], acceptance: list[list[float]], costs: VerifyCosts, draft_seconds: float,
                 max_nodes: int, merge: bool) -> Selection:
    """acceptance[b][j]: P(token j of branch b accepted | token j - 1 accepted)."""
    lengths = [0] * len(branches)
    node_probability: dict[tuple, float] = {}
    children_mass: dict[tuple, float] = {}  # merge: probability given to the children of each node so far
    frontier = [(-acceptance[b][0], b, 0) for b in range(len(branches)) if branches[b].tokens]
    heapq.heapify(frontier)
    expected = 0.0
    best = Selection([0] * len(branches), 0, 1.0, costs.seconds(1) + draft_seconds)
    while frontier and len(node_probability) < max_nodes:
        negative, branch, position = heapq.heappop(frontier)
        key = tuple(branches[branch].tokens[:position + 1]) if merge else (branch, position)
        if key not in node_probability:
            probability = -negative
            if merge:  # siblings are exclusive: together at most their parent's probability
                parent = key[:-1]
                probability = min(probability, node_probability.get(parent, 1.0) - children_mass.get(parent, 0.0))
                children_mass[parent] = children_mass.get(parent, 0.0) + probability
            node_probability[key] = probability
            expected += probability
        lengths[branch] = position + 1
        if position + 1 < len(branches[branch].tokens):
            probability = node_probability[key] * acceptance[branch][position + 1]
            heapq.heappush(frontier, (-probability, branch, position + 1))
        candidate = Selection(list(lengths), len(node_probability), 1.0 + expected,
                              costs.seconds(1 + len(node_probability)) + draft_seconds)
        if candidate.tokens_per_second > best.tokens_per_second:
            best = candidate
    return best


def estimated_acceptance(branches: list[Branch], estimates: AcceptanceEstimates) -> list[list[float]]:
    return [[estimates.estimate(key, prior) for key, prior in zip(branch.keys, branch.priors)] for branch in branches]
