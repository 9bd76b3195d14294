"""specdiff's cache folder on this machine, and the measurements kept there per machine in
JSON files (kernel plans, verify-cost tables): read leniently, written under a lock so
concurrent processes keep each other's entries, replaced atomically so a reader never sees
half a file."""

from __future__ import annotations

import fcntl
import json
import os
import platform
from pathlib import Path


def cache_root() -> Path:
    """$SPECDIFF_CACHE, else the standard user cache ($XDG_CACHE_HOME or ~/.cache)/specdiff."""
    if os.environ.get("SPECDIFF_CACHE"):
        return Path(os.environ["SPECDIFF_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "specdiff"


def cpu_name() -> str:
    """The CPU's model name, the first part of every key: a measurement holds for one CPU."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_entries(path: Path) -> dict:
    """The stored entries, or {} when the file is missing or not a JSON object we wrote."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return {}
    return stored if isinstance(stored, dict) else {}


def store_entry(path: Path, key: str, value) -> None:
    """Add ``key: value`` to the file under an exclusive lock (read, merge, atomic replace). A
    cache that cannot be written (read-only, a folder in the way) is skipped: the value is
    measured again next time."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stored = read_entries(path)
            stored[key] = value
            partial.write_text(json.dumps(stored, indent=2) + "\n")
            os.replace(partial, path)
    except OSError:
        partial.unlink(missing_ok=True)
