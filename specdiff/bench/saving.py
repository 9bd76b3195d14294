"""Write a measurement command's result: ``<stem>.json`` and its table ``<stem>.md``, each by
atomic rename, so a killed run never leaves a file that looks finished."""

from __future__ import annotations

import json
import os
from pathlib import Path


def save_result(out: str | Path, stem: str, result: dict, table: str) -> None:
    """Write ``result`` and ``table`` under ``out`` (created) and print the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in ((f"{stem}.json", json.dumps(result, indent=2) + "\n"), (f"{stem}.md", table)):
        partial = out / f".{name}.partial"
        partial.write_text(text)
        os.replace(partial, out / name)
    print(table)
