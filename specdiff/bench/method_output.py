"""What one bench method returns for one prompt (shared by in-process, vLLM and llama.cpp
methods), and the one mapping from a generation's steps to per-call columns, used by bench
records and ``specdiff generate --json`` alike."""

from __future__ import annotations

from dataclasses import dataclass, field


def step_columns(steps) -> dict:
    """Per verifier call columns of a generation (``engine.StepRecord`` list), plus its totals."""
    return {
        "accepted_lengths": [len(s.new_tokens) for s in steps],  # tokens committed per call, the verifier's own included
        "drafted": [s.drafted for s in steps],  # draft slots proposed per call (the longest row)
        "candidates": [s.candidate for s in steps],  # the row whose tokens were kept
        "step_verify_seconds": [round(s.verify_seconds, 5) for s in steps],
        "nodes": [s.nodes for s in steps],  # tokens scored per call (tree nodes, the root included)
        "sources": [s.source for s in steps],  # where the accepted draft tokens came from ("" none)
        "plans": [s.plan for s in steps],  # the tree policy's choice per call (None: no policy)
        "draft_seconds": sum(s.draft_seconds for s in steps),
        "verify_seconds": sum(s.verify_seconds for s in steps),
    }


@dataclass
class MethodOutput:
    tokens: list[int]
    seconds: float
    accepted_lengths: list[int] | None = None  # tokens committed per verifier call (Spec-Bench style)
    drafted: list[int] | None = None  # draft slots proposed per verifier call
    draft_seconds: float | None = None
    verify_seconds: float | None = None
    candidates: list[int] = field(default_factory=list)
    spec_counts: dict | None = None  # vLLM methods: {"drafts", "accepted_per_position"} from vLLM's counters
    step_verify_seconds: list[float] | None = None  # per verifier call
    nodes: list[int] | None = None  # tokens scored per verifier call (tree nodes, the root included)
    sources: list[str] | None = None  # per verifier call: where its accepted draft tokens came from ("" none)
    plans: list[dict | None] | None = None  # per verifier call: the tree policy's choice and estimates

    @classmethod
    def from_generation(cls, result) -> MethodOutput:
        """The output of our engine (``engine.GenerationResult``)."""
        return cls(result.tokens, result.seconds, **step_columns(result.steps))
