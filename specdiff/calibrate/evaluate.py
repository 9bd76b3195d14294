"""Greedy acceptance of drafters along the verifier's own greedy trajectories.

Under greedy decoding speculative output IS the verifier's greedy trajectory, so a
drafter's steps can be replayed against a trajectory computed once: the engine's own loop
runs with a ``TrajectoryVerifier`` that scores every draft against the trajectory instead
of running the verifier.
This gives tau and per-position acceptance for many drafters (and K) at the cost of
drafting alone; wall-clock speed-ups come from `specdiff bench`, which runs the real loop.
(The replay assumes the multi-token verification pass picks the same argmax as the
single-token pass, true except at float-noise ties.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from specdiff.drafter import Drafter
from specdiff.engine import DecodingConfig, autoregressive_generate, stream_generate
from specdiff.prompting import encode_prompt
from specdiff.sampling import SamplingConfig
from specdiff.verifier import CommittedTokens, ScoredDrafts, Verifier, build_trie
from specdiff.verifiers.backends import TRANSFORMERS, open_verifier


@dataclass
class ReplayStats:
    gamma: int
    steps: int = 0
    tokens: int = 0
    draft_seconds: float = 0.0
    reached: list[int] = field(default_factory=list)  # steps that drafted slot j
    accepted: list[int] = field(default_factory=list)  # steps that accepted slot j

    def __post_init__(self):
        self.reached = self.reached or [0] * self.gamma
        self.accepted = self.accepted or [0] * self.gamma

    @property
    def tau(self) -> float:
        return self.tokens / max(1, self.steps)

    @property
    def acceptance_by_position(self) -> list[float]:
        """Fraction of steps that accepted draft slot j (unconditional)."""
        return [a / r if r else 0.0 for a, r in zip(self.accepted, self.reached)]

    def to_dict(self) -> dict:
        return {"tau": self.tau, "steps": self.steps, "tokens": self.tokens, "draft_seconds": self.draft_seconds,
                "acceptance_by_position": self.acceptance_by_position}


class TrajectoryVerifier:
    """Stands in for the verifier along a known greedy trajectory, behind the same
    prefill / score / commit contract, so that replay runs the engine's own loop.

    Its scores are the one-hot of the trajectory's tokens: every row is scored as if it
    followed the trajectory, which is exact wherever greedy acceptance looks (up to a
    row's first mismatch). Hidden states, for drafters that read them, come from one
    teacher-forced pass of the real verifier over prompt + trajectory (``features``
    [length - 1, F], position by position)."""

    max_length = None

    def __init__(self, prompt_ids: list[int], trajectory: list[int], vocab_size: int, features: Tensor | None = None):
        self.sequence = prompt_ids + trajectory
        self.prompt_length = len(prompt_ids)
        self.vocab_size = vocab_size
        self.features = features
        self._cached = 0

    def prefill(self, tokens: Tensor, feature_layers=()) -> Tensor | None:
        self._cached = tokens.shape[1] - 1
        return self._features(0, self._cached, feature_layers)

    def _features(self, start: int, end: int, feature_layers) -> Tensor | None:
        if not feature_layers:
            return None
        if self.features is None:
            raise ValueError("this drafter reads the verifier's hidden states: replay needs the verifier's features")
        return self.features[start:end]

    def score(self, candidates: Tensor, feature_layers=(), lengths: Tensor | None = None) -> ScoredDrafts:
        num_drafts, width = candidates.shape
        truth = torch.tensor(self.sequence[self._cached + 1: self._cached + 1 + width])  # [1 + gamma]
        logits = torch.nn.functional.one_hot(truth, self.vocab_size).float().expand(num_drafts, -1, -1)
        return ScoredDrafts(build_trie(candidates, lengths), self._cached, logits, None)

    def commit(self, scored: ScoredDrafts, candidate: int, num_accepted: int) -> CommittedTokens:
        start, self._cached = self._cached, self._cached + 1 + num_accepted
        features = self.features[start:self._cached] if self.features is not None else None
        return CommittedTokens(self.sequence[start:self._cached], features)


def replay(drafter: Drafter, verifier: TrajectoryVerifier, gamma: int, stats: ReplayStats,
           num_drafts: int = 1, draft_sampling: SamplingConfig = SamplingConfig(), seed: int = 0) -> None:
    """Greedy speculative decoding of ``verifier``'s trajectory with ``drafter``, through
    the engine's loop; adds every step's drafted and accepted slots to ``stats``."""
    prompt = torch.tensor([verifier.sequence[: verifier.prompt_length]])
    length = len(verifier.sequence) - verifier.prompt_length
    config = DecodingConfig(gamma=gamma, num_drafts=num_drafts, max_new_tokens=length, draft_sampling=draft_sampling,
                            seed=seed)
    produced = []
    for step in stream_generate(prompt, verifier, drafter, config):
        for slot in range(step.drafted):
            stats.reached[slot] += 1
            stats.accepted[slot] += slot < step.accepted
        stats.steps += 1
        stats.tokens += len(step.new_tokens)
        stats.draft_seconds += step.draft_seconds
        produced.extend(step.new_tokens)
    if produced != verifier.sequence[verifier.prompt_length:]:
        raise RuntimeError("replay left the trajectory: the trajectory verifier is inconsistent")


def load_trajectories(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines()) if row}


def trajectory_file(out: Path, backend: str) -> Path:
    """Where ``calibrate eval`` keeps the verifier's greedy trajectories on ``backend`` (each
    backend's own: a near-tie can fall either way between them)."""
    return out / ("trajectories.jsonl" if backend == TRANSFORMERS else f"trajectories-{backend}.jsonl")


def verifier_trajectories(prompts, verifier_spec: str, max_new_tokens: int, out: Path,
                          backend: str = TRANSFORMERS) -> dict[str, dict]:
    """Plain greedy decoding of every prompt through our engine on ``backend`` (not AUTO),
    cached in ``out`` (one JSON line per prompt, appended as it completes, so reruns resume)."""

    done = load_trajectories(out)
    todo = [p for p in prompts if p.id not in done]
    if todo:
        opened = open_verifier(verifier_spec, backend)
        with open(out, "a") as handle:
            for prompt in tqdm(todo, desc=f"verifier greedy ({backend})"):
                prompt_ids = encode_prompt(opened.tokenizer, prompt.turns[0])
                result = autoregressive_generate(prompt_ids, opened.verifier,
                                                 DecodingConfig(max_new_tokens=max_new_tokens), opened.eos)
                row = {"id": prompt.id, "prompt_ids": prompt_ids[0].tolist(), "trajectory": result.tokens,
                       "seconds": result.seconds}
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                done[prompt.id] = row
    return {p.id: done[p.id] for p in prompts}


def replay_eval(drafter, trajectories: dict[str, dict], gamma: int, num_drafts: int = 1,
                draft_temperature: float = 0.0, seed: int = 0, verifier_model=None, draft_top_k: int = 0) -> ReplayStats:
    """Tau and acceptance by position of ``drafter`` over ``trajectories``. A drafter that
    reads hidden states needs ``verifier_model`` (one teacher-forced pass per trajectory)."""

    stats = ReplayStats(gamma)
    sampling = SamplingConfig(temperature=draft_temperature, top_k=draft_top_k)
    for row in trajectories.values():
        features = None
        if drafter.feature_layers:
            if verifier_model is None:
                raise ValueError("this drafter reads the verifier's hidden states: pass the verifier model")
            sequence = torch.tensor([row["prompt_ids"] + row["trajectory"]])
            features = Verifier(verifier_model).prefill(sequence, drafter.feature_layers)
        verifier = TrajectoryVerifier(row["prompt_ids"], row["trajectory"], drafter.vocab_size, features)
        replay(drafter, verifier, gamma, stats, num_drafts, sampling, seed)
    return stats
