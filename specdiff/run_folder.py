"""One rule for every command that resumes into a folder: the settings saved there must be
the settings of this run (except those named as free to change), or the rerun is refused
with the differences named, so that no folder mixes work made under other settings."""

from __future__ import annotations

import json
from pathlib import Path


def flat_settings(settings: dict, prefix: str = "") -> dict:
    """Nested settings as one level, ``outer.inner`` keys."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_same_settings(config_path: Path, current: dict, free: tuple[str, ...] = (), flag_names: bool = True) -> None:
    """Refuse when ``config_path`` holds settings other than ``current`` (both flattened; keys
    in ``free`` may differ). Names are shown as flags (``--max-new-tokens``) or as keys."""
    if not config_path.is_file():
        return
    try:
        saved = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{config_path}: unreadable settings of an earlier run ({error}); use another --out") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{config_path}: unreadable settings of an earlier run; use another --out")
    saved = flat_settings(saved)

    def name(key: str) -> str:
        return "--" + key.replace("_", "-") if flag_names else key

    differing = [f"{name(key)} ({saved.get(key)!r} there, {value!r} now)"
                 for key, value in flat_settings(current).items() if key not in free and saved.get(key) != value]
    if differing:
        raise ValueError(f"{config_path.parent} holds work made with other settings: {'; '.join(differing)}. "
                         "Rerun with those settings to resume, or use another --out")
