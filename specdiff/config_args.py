"""Map a frozen config dataclass onto argparse flags, so the dataclass stays the single
source of truth for names, types and defaults."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def add_dataclass_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (), prefix: str = "") -> None:
    """One flag per field, ``--<prefix><field-name>``; a field's metadata may give ``help``,
    ``choices`` and ``aliases`` (other flag names kept for compatibility)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        kind = hints[field.name]
        flags = ["--" + (prefix + field.name).replace("_", "-"), *field.metadata.get("aliases", ())]
        help_text = f"{field.metadata.get('help', '')} (default: {field.default})".strip()
        if kind is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
        else:
            optional = typing.get_origin(kind) in (typing.Union, types.UnionType)
            base = typing.get_args(kind)[0] if optional else kind
            parser.add_argument(*flags, type=base, default=field.default, choices=field.metadata.get("choices"),
                                help=help_text)


def dataclass_from_args(cls, args: argparse.Namespace, prefix: str = "", **overrides):
    names = {f.name: (prefix + f.name).replace("-", "_") for f in dataclasses.fields(cls)}
    values = {name: getattr(args, dest) for name, dest in names.items() if hasattr(args, dest)}
    values.update(overrides)
    return cls(**values)
