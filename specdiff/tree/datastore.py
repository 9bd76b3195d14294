"""Read a user's datastore (``--datastore PATH``) into token documents for the suffix index.

PATH is a file or a folder of files (read recursively, sorted). ``.jsonl`` files hold one
document per line: a JSON string, or an object whose ``text`` field is the document (or
``prompt`` and ``completion`` fields, joined). Any other file is one document of UTF-8 text.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from specdiff.tree.suffix_index import SuffixIndex


def datastore_files(path: str | Path) -> list[Path]:
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"--datastore {path}: no such file or folder")
    if not root.is_dir() and not root.is_file():  # a FIFO or device would block the read, or never end
        raise ValueError(f"--datastore {path}: not a regular file or a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    if not files:
        raise ValueError(f"--datastore {path}: the folder holds no files")
    return files


def _jsonl_documents(file: Path) -> Iterator[str]:
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"--datastore {file}, line {number}: not JSON ({error.msg})") from None
        if isinstance(record, dict):
            parts = [record["text"]] if "text" in record else [record.get(key, "") for key in ("prompt", "completion")]
            record = "".join(parts) if all(isinstance(part, str) for part in parts) else None
        if not isinstance(record, str):
            raise ValueError(f"--datastore {file}, line {number}: expected a string, or an object whose 'text' "
                             "(or 'prompt' and 'completion') fields are strings")
        yield record


def datastore_texts(path: str | Path) -> Iterator[str]:
    for file in datastore_files(path):
        try:
            if file.suffix == ".jsonl":
                yield from _jsonl_documents(file)
            else:
                yield file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"--datastore {file}: cannot read it as UTF-8 text ({error})") from None


PIECE_CHARS = 1 << 16  # tokenized at a time: a tokenizer's memory grows steeply with the length of one call


def _pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` in consecutive pieces of about ``size`` characters, cut after a newline where
    one is near (a cut only changes how the few tokens at it are split)."""
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            newline = text.rfind("\n", start + size // 2, end)
            end = newline + 1 if newline >= 0 else end
        yield text[start:end]
        start = end


def _tokenize(tokenizer, text: str) -> list[int]:
    return [token for piece in _pieces(text) for token in tokenizer.encode(piece, add_special_tokens=False)]


def index_datastore(path: str | Path, tokenizer, index: SuffixIndex) -> None:
    """Tokenize every document into ``index``, showing progress, then say its size and memory."""
    documents = [_tokenize(tokenizer, text)
                 for text in tqdm(datastore_texts(path), desc="indexing datastore", unit=" documents",
                                  file=sys.stderr)]
    documents = [d for d in documents if d]
    if not documents:
        raise ValueError(f"--datastore {path}: no text in it")
    index.add(documents)
    print(f"datastore: {index.documents} documents, {index.num_tokens} tokens, "
          f"index {index.nbytes / 2**20:.1f} MiB", file=sys.stderr)
