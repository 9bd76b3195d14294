"""What one bench method returns for one prompt: shared by in-process and vLLM methods."""

from __future__ import annotations

from dataclasses import dataclass, field


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
