"""An options dataclass as argparse flags, and back: each field's flag, help and default come from
the field (``inputs.options.option``); ``new_tokens`` is ``--new-tokens``, a tuple of numbers is
comma-separated, a field that defaults to True is turned off by ``--no-<name>``."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from ..inputs.options import Number, flag, numbers


def _many(hint: object) -> bool:
    return typing.get_origin(hint) is tuple


def _scalar(hint: object) -> Any:
    """The type a single value is parsed as: ``int | None`` -> int."""
    kinds = [k for k in typing.get_args(hint) or (hint,) if k is not type(None)]
    return kinds[0]


def _shown(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def add_options(parser: argparse.ArgumentParser, kind: type) -> None:
    """One flag per field of the options dataclass ``kind``, its help ending in the default."""
    hints = typing.get_type_hints(kind)
    for f in dataclasses.fields(kind):
        settings, hint = dict(f.metadata["cli"]), hints[f.name]
        if hint is bool:
            name = f"--no-{f.name.replace('_', '-')}" if f.default else flag(f.name)
            action = "store_false" if f.default else "store_true"
            parser.add_argument(name, dest=f.name, action=action, help=f.metadata["help"])
            continue
        if "type" not in settings:
            settings["type"] = str if _many(hint) else _scalar(hint)
        default = f.default
        if _many(hint) and "nargs" not in settings:
            default = _shown(default)  # parsed back by ``options_from``
        shown = "" if f.default in (None, ()) else f" (default {_shown(f.default)})"
        parser.add_argument(flag(f.name), default=default, help=f"{f.metadata['help']}{shown}", **settings)


def options_from(args: argparse.Namespace, kind: type) -> Any:
    """The options ``kind`` of parsed ``args``: comma-separated values split (numbers checked
    against the field's check, ValueError naming the flag as typed)."""
    hints = typing.get_type_hints(kind)
    values = {}
    for f in dataclasses.fields(kind):
        value = getattr(args, f.name)
        if _many(hints[f.name]) and isinstance(value, str):
            check = f.metadata["check"]
            if isinstance(check, Number):
                value = numbers(flag(f.name), value, check)
            else:
                value = [item for item in value.split(",") if item]
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return kind(**values)
