"""Map a frozen config dataclass onto argparse flags, so the dataclass stays the single
source of truth for names, types and defaults."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def add_dataclass_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        kind = hints[field.name]
        flag = "--" + field.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            optional = typing.get_origin(kind) in (typing.Union, types.UnionType)
            base = typing.get_args(kind)[0] if optional else kind
            parser.add_argument(flag, type=base, default=field.default, help=f"(default: {field.default})")


def dataclass_from_args(cls, args: argparse.Namespace, **overrides):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)
