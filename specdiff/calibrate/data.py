"""Training sequences for the two stages, drawn as a pure function of (seed, step, rank)
so that resuming at a step reproduces the data exactly with no saved data state.

- adaptation: plain text (GSM8K train question + answer, Python function sources), no
  verifier needed; windows anywhere in the sequence.
- alignment: the verifier's teacher completions; windows only inside the completion.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TrainingSequence:
    ids: Tensor  # [seq_len] int64
    first_start: int  # earliest window start (the last token before what is predicted)
    key: str = ""  # names the sequence for caches (teacher records: a hash of its tokens)


class TextSequences:
    def __init__(self, texts: list[str], tokenizer, max_seq_len: int):
        if not texts:
            raise ValueError("no adaptation texts found")
        self.texts, self.tokenizer, self.max_seq_len = texts, tokenizer, max_seq_len

    def draw(self, rng: random.Random) -> TrainingSequence:
        text = self.texts[rng.randrange(len(self.texts))]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_seq_len]
        if len(ids) < 3:
            return self.draw(rng)
        return TrainingSequence(torch.tensor(ids), 0)


class TeacherSequences:
    def __init__(self, records: list[dict], max_seq_len: int):
        self.records = [r for r in records
                        if len(r["completion_ids"]) >= 2 and len(r["prompt_ids"]) + 2 <= max_seq_len]
        if not self.records:
            raise ValueError("no usable teacher records: run `specdiff calibrate data` first")
        self.max_seq_len = max_seq_len

    def draw(self, rng: random.Random) -> TrainingSequence:
        return self.sequence(rng.randrange(len(self.records)))

    def sequence(self, index: int) -> TrainingSequence:
        record = self.records[index]
        ids = torch.tensor((record["prompt_ids"] + record["completion_ids"])[: self.max_seq_len])
        return TrainingSequence(ids, len(record["prompt_ids"]) - 1, content_key(ids))

    def split(self, holdout: int) -> tuple[TeacherSequences, TeacherSequences | None]:
        """(training, held out): the last ``holdout`` records are held out."""
        if holdout <= 0:
            return self, None
        if holdout >= len(self.records):
            raise ValueError(f"--holdout-records {holdout} leaves no training data ({len(self.records)} records)")
        return (TeacherSequences(self.records[:-holdout], self.max_seq_len),
                TeacherSequences(self.records[-holdout:], self.max_seq_len))


def content_key(ids: Tensor) -> str:
    """A name for a token sequence that does not depend on where it sits in a data set."""
    return hashlib.sha1(ids.numpy().tobytes()).hexdigest()[:20]


def step_rng(seed: int, step: int, rank: int) -> random.Random:
    return random.Random(f"{seed}:{step}:{rank}")


def window_starts(sequence: TrainingSequence, count: int, rng: random.Random) -> Tensor:
    """Up to ``count`` distinct window starts in [first_start, seq_len - 2]."""
    candidates = list(range(sequence.first_start, sequence.ids.shape[0] - 1))
    return torch.tensor(sorted(rng.sample(candidates, min(count, len(candidates)))))
