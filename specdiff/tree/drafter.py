"""``TreeDrafter``: a ``Drafter`` that puts every source's branches into one verified tree.

Each step: the lookup sources propose (free); the policy weighs a lookup-only tree against one
that adds the model drafter's block (its acceptance estimated per depth, its call cost
measured) and a plain step; only if the model pays is it called, and then the final tree is
chosen from every branch with the drafter's own per-slot confidences. Rows go to the engine
ragged, with the source of each and the policy's plan; ``update`` calibrates the estimates
from what was committed and keeps the verify-cost table current.

Losslessness. Greedy: any rows are exact. Sampled verification (``rejection_accept`` over the
rows, in order): exact because (1) a lookup row's tokens follow from the committed tokens
alone (one-hot draft distribution) and a model row's token at slot j is drawn from its recorded
distribution given its own tokens to the left, independently of every other row; (2) which
rows exist and how long they are depends only on the committed tokens, the drafter's
distributions (its confidence is a distribution's largest probability, not the drawn token's)
and estimates learnt from earlier steps, never on a row's sampled tokens. Rows that share a
node stay separate rows (the verifier merges them, the acceptance rule tries each in turn); the
policy merges shared prefixes in its accounting only when drafts are deterministic (greedy
drafting), since otherwise a coincidence between a sampled token and a lookup token would
lengthen a row.
"""

from __future__ import annotations

import torch
from torch import Tensor

from specdiff.drafter import Accepted, Draft
from specdiff.sampling import SamplingConfig
from specdiff.tree.config import TreeConfig
from specdiff.tree.costs import VerifyCosts
from specdiff.tree.estimates import AcceptanceEstimates
from specdiff.tree.policy import estimated_acceptance, select_nodes
from specdiff.tree.sources import Branch, LookupSource, ModelSource, depth_bucket, model_prior
from specdiff.tree.suffix_index import SuffixIndex


class TreeDrafter:
    def __init__(self, vocab_size: int, lookups: list[LookupSource], model: ModelSource | None, costs: VerifyCosts,
                 config: TreeConfig = TreeConfig(), outputs: SuffixIndex | None = None,
                 estimates: AcceptanceEstimates | None = None):
        self.vocab_size, self.lookups, self.model, self.costs, self.config = vocab_size, lookups, model, costs, config
        self.outputs = outputs  # earlier sequences join it when the next one starts
        self.estimates = estimates or AcceptanceEstimates()
        self._sequence: list[int] = []
        self._kept: list[tuple[Branch, int]] = []  # the drafted branches verified, with the tokens kept of each
        self._nodes: int | None = None  # draft nodes of that tree

    @property
    def feature_layers(self) -> tuple[int, ...]:
        return self.model.drafter.feature_layers if self.model else ()

    @property
    def max_gamma(self) -> int | None:
        return getattr(self.model.drafter, "max_gamma", None) if self.model else None

    def start(self, prompt: list[int], features: Tensor | None = None) -> None:
        if self.outputs is not None and self._sequence:
            self.outputs.add([self._sequence])
        self._sequence = list(prompt)
        if self.model:
            self.model.start(prompt, features)

    def _expected_model_branch(self, gamma: int) -> Branch:
        """The model's block before it is drafted: per-depth acceptance learnt so far."""
        name = self.model.name
        keys = [(name, "expected", j) for j in range(gamma)]
        priors = [self.estimates.depth_rate(name, depth_bucket(j), model_prior(j)) for j in range(gamma)]
        return Branch(name, [-1 - j for j in range(gamma)], keys, priors)  # placeholder tokens never merge

    def draft(self, gamma: int, sampling: SamplingConfig, num_drafts: int = 1,
              generator: torch.Generator | None = None, greedy_first: bool = False) -> Draft:
        merge = sampling.greedy  # deterministic drafts only: see the module docstring
        branches = [b for source in self.lookups for b in source.propose(self._sequence, self.config.max_depth)]
        acceptance = estimated_acceptance(branches, self.estimates)
        select = dict(costs=self.costs, max_nodes=self.config.max_nodes, merge=merge)
        selection = select_nodes(branches, acceptance, draft_seconds=0.0, **select)
        choice = "lookup" if selection.nodes else "plain"
        if self.model:
            expected = self._expected_model_branch(gamma)
            with_model = select_nodes(branches + [expected], acceptance + [expected.priors],
                                      draft_seconds=self.model.seconds or 0.0, **select)
            if with_model.lengths[-1] and with_model.tokens_per_second > selection.tokens_per_second:
                drafted = self.model.propose(len(self._sequence), gamma, sampling, num_drafts, generator, greedy_first)
                branches, acceptance = branches + drafted, acceptance + estimated_acceptance(drafted, self.estimates)
                selection = select_nodes(branches, acceptance, draft_seconds=self.model.seconds or 0.0, **select)
                choice = "hybrid"
        self._kept = [(b, n) for b, n in zip(branches, selection.lengths) if n]
        self._nodes = selection.nodes
        plan = {"choice": choice, "expected_tokens": round(selection.expected_tokens, 3),
                "estimated_seconds": round(selection.seconds, 4), "nodes": selection.nodes,
                "branches": [{"source": b.source, "tokens": b.tokens[:n], "estimates": [round(e, 3) for e in a[:n]]}
                             for b, a, n in zip(branches, acceptance, selection.lengths) if n]}
        return self._rows(sampling, plan)

    def _rows(self, sampling: SamplingConfig, plan: dict) -> Draft:
        kept = self._kept
        if not kept:
            return Draft(torch.zeros(1, 0, dtype=torch.long), None, plan=plan)
        width = max(n for _, n in kept)
        tokens = torch.zeros(len(kept), width, dtype=torch.long)
        for row, (branch, n) in enumerate(kept):
            tokens[row, :n] = torch.tensor(branch.tokens[:n])
        probs = None
        if not sampling.greedy and any(b.draft_probs is not None for b, _ in kept):
            probs = torch.nn.functional.one_hot(tokens, self.vocab_size).float()  # lookup rows: deterministic
            for row, (branch, n) in enumerate(kept):
                if branch.draft_probs is not None:
                    probs[row, :n] = branch.draft_probs[:n]
        lengths = torch.tensor([n for _, n in kept])
        return Draft(tokens, probs, lengths=lengths, sources=tuple(b.source for b, _ in kept), plan=plan)

    def update(self, accepted: Accepted) -> None:
        committed, kept = accepted.tokens, self._kept
        if accepted.verify_seconds is not None and self._nodes is not None:
            self.costs.record(1 + self._nodes, accepted.verify_seconds)
        for branch, length in kept:
            for depth in range(min(length, len(committed))):
                hit = branch.tokens[depth] == committed[depth]
                self.estimates.record(branch.keys[depth], depth_bucket(depth), hit)
                if not hit:
                    break
        self._sequence.extend(committed)
        if self.model:
            model_rows = [row for row, (b, _) in enumerate(kept) if b.source == self.model.name]
            chosen = model_rows.index(accepted.candidate) if accepted.candidate in model_rows else -1
            self.model.update(Accepted(committed, chosen, accepted.num_accepted if chosen >= 0 else 0,
                                       accepted.features, accepted.verify_seconds))
        self._kept, self._nodes = [], None
