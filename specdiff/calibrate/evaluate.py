"""Greedy acceptance of drafters along the verifier's own greedy trajectories.

Under greedy decoding speculative output IS the verifier's greedy trajectory, so a
drafter's steps can be replayed against a trajectory computed once: at each step the
drafter drafts from the trajectory prefix, ``greedy_accept`` compares with the
trajectory, and the next step starts after the accepted tokens plus the verifier's own.
This gives tau and per-position acceptance for many drafters (and K) at the cost of
drafting alone; wall-clock speed-ups come from `specdiff bench`, which runs the real loop.
(The replay assumes the multi-token verification pass picks the same argmax as the
single-token pass, true except at float-noise ties.)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from specdiff.acceptance import greedy_accept
from specdiff.drafters.base import Drafter
from specdiff.engine import DecodingConfig
from specdiff.sampling import SamplingConfig


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


def replay(drafter: Drafter, prompt_ids: list[int], trajectory: list[int], gamma: int, stats: ReplayStats,
           num_drafts: int = 1, draft_sampling: SamplingConfig = SamplingConfig(), seed: int = 0) -> None:
    """Replay greedy speculative decoding of ``trajectory`` with ``drafter``, adding to ``stats``."""
    generator = torch.Generator().manual_seed(seed)
    greedy_first = DecodingConfig(num_drafts=num_drafts, draft_sampling=draft_sampling).greedy_first_draft  # as the engine
    drafter.reset()
    position = 0
    while position < len(trajectory):
        step_gamma = min(gamma, len(trajectory) - position - 1)
        context = torch.tensor([prompt_ids + trajectory[:position]])
        truth = trajectory[position:position + step_gamma + 1]
        if step_gamma > 0:
            started = time.perf_counter()
            draft = drafter.draft(context, step_gamma, draft_sampling, num_drafts, generator, greedy_first=greedy_first)
            stats.draft_seconds += time.perf_counter() - started
            target_logits = torch.nn.functional.one_hot(torch.tensor(truth), drafter.vocab_size).float()
            accepted = greedy_accept(draft.tokens, target_logits.expand(draft.tokens.shape[0], -1, -1)).num_accepted
            for slot in range(step_gamma):
                stats.reached[slot] += 1
                stats.accepted[slot] += slot < accepted
        else:
            accepted = 0
        stats.steps += 1
        stats.tokens += accepted + 1
        position += accepted + 1


def load_trajectories(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines()) if row}


def verifier_trajectories(prompts, verifier_spec: str, max_new_tokens: int, out: Path) -> dict[str, dict]:
    """Plain greedy decoding of every prompt through our engine, cached in ``out``
    (one JSON line per prompt, appended as it completes, so reruns resume)."""
    from tqdm.auto import tqdm

    from specdiff.engine import DecodingConfig, autoregressive_generate
    from specdiff.models.loading import encode_prompt, eos_token_ids, load_causal_lm
    from specdiff.verifier import Verifier

    done = load_trajectories(out)
    todo = [p for p in prompts if p.id not in done]
    if todo:
        model, tokenizer = load_causal_lm(verifier_spec)
        verifier, eos = Verifier(model), eos_token_ids(model, tokenizer)
        with open(out, "a") as handle:
            for prompt in tqdm(todo, desc="verifier greedy"):
                prompt_ids = encode_prompt(tokenizer, prompt.turns[0])
                result = autoregressive_generate(prompt_ids, verifier, DecodingConfig(max_new_tokens=max_new_tokens), eos)
                row = {"id": prompt.id, "prompt_ids": prompt_ids[0].tolist(), "trajectory": result.tokens,
                       "seconds": result.seconds}
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                done[prompt.id] = row
    return {p.id: done[p.id] for p in prompts}


def replay_eval(drafter, trajectories: dict[str, dict], gamma: int, num_drafts: int = 1,
                draft_temperature: float = 0.0, seed: int = 0) -> ReplayStats:
    stats = ReplayStats(gamma)
    sampling = SamplingConfig(temperature=draft_temperature)
    for row in trajectories.values():
        replay(drafter, row["prompt_ids"], row["trajectory"], gamma, stats, num_drafts, sampling, seed)
    return stats
