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
    """Teacher records that can be trained on within ``max_seq_len`` tokens; ``filtering``
    says what was left out or cut, and why (None when nothing was)."""

    def __init__(self, records: list[dict], max_seq_len: int, vocab_size: int | None = None):
        if vocab_size is not None:
            check_token_ids(records, vocab_size)
        short = sum(len(r["completion_ids"]) < 2 for r in records)
        long_prompt = sum(len(r["completion_ids"]) >= 2 and len(r["prompt_ids"]) + 2 > max_seq_len for r in records)
        self.records = [r for r in records
                        if len(r["completion_ids"]) >= 2 and len(r["prompt_ids"]) + 2 <= max_seq_len]
        cut = sum(len(r["prompt_ids"]) + len(r["completion_ids"]) > max_seq_len for r in self.records)
        if not self.records:
            raise ValueError(f"no usable teacher records of {len(records)}: run `specdiff calibrate data` first"
                             + (f" or raise --max-seq-len ({long_prompt} prompts do not fit {max_seq_len})"
                                if long_prompt else ""))
        self.max_seq_len = max_seq_len
        parts = [f"{long_prompt} whose prompt leaves no room for a completion within --max-seq-len {max_seq_len}"
                 if long_prompt else "", f"{short} with fewer than 2 completion tokens" if short else ""]
        dropped = " and ".join(p for p in parts if p)
        notes = [f"left out {short + long_prompt} of {len(records)} teacher records: {dropped}" if dropped else "",
                 f"cut {cut} longer records to their first {max_seq_len} tokens" if cut else ""]
        self.filtering = "; ".join(n for n in notes if n) or None

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


def check_token_ids(records: list[dict], vocab_size: int) -> None:
    """One line naming the first record whose token ids lie outside the model's vocabulary."""
    for index, record in enumerate(records):
        ids = record["prompt_ids"] + record["completion_ids"]
        bad = next((t for t in ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise ValueError(f"teacher record {index} holds token id {bad}, outside the verifier's vocabulary of "
                             f"{vocab_size}: the teacher data was made with another tokenizer")


def content_key(ids: Tensor) -> str:
    """A name for a token sequence that does not depend on where it sits in a data set."""
    return hashlib.sha1(ids.numpy().tobytes()).hexdigest()[:20]


def step_rng(seed: int, step: int, rank: int) -> random.Random:
    return random.Random(f"{seed}:{step}:{rank}")


def window_starts(sequence: TrainingSequence, count: int, rng: random.Random) -> Tensor:
    """Up to ``count`` distinct window starts in [first_start, seq_len - 2]."""
    candidates = list(range(sequence.first_start, sequence.ids.shape[0] - 1))
    return torch.tensor(sorted(rng.sample(candidates, min(count, len(candidates)))))
