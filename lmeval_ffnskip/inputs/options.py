"""Options and their checks, run before any weights load: a bad value raises ValueError with one
line naming the option, the value and what is valid.

An instrument's options are one frozen dataclass whose fields are made with ``option``: the
field's default, its help line and its check are the option's one definition; the CLI's flags
and help (``cli_options``), a sweep config's checks and the instrument's run function all read
them from there."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Number:
    """A number (``kind`` int or float) in [low, high], or (low, high) when ``open``; ``many``: a
    list of them; ``optional``: None is allowed too."""

    kind: type = float
    low: float | None = None
    high: float | None = None
    open: bool = False
    many: bool = False
    optional: bool = False

    def describe(self) -> str:
        """What a valid value is, e.g. ``an integer >= 2``, ``a list of numbers in [0, 1]``."""
        word = "integer" if self.kind is int else "number"
        text = f"a list of {word}s" if self.many else f"{'an' if self.kind is int else 'a'} {word}"
        if self.low is not None and self.high is not None:
            left, right = "()" if self.open else "[]"
            text += f" in {left}{self.low:g}, {self.high:g}{right}"
        elif self.low is not None:
            text += f" {'>' if self.open else '>='} {self.low:g}"
        return text

    def _typed(self, value: Any) -> bool:
        """Whether ``value`` is one number of the kind (bools are not numbers here)."""
        return not isinstance(value, bool) and isinstance(value, int if self.kind is int else int | float)

    def _within(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.open else value >= self.low)
        return above and (self.high is None or (value < self.high if self.open else value <= self.high))

    def check(self, name: str, value: Any) -> None:
        if value is None and self.optional:
            return
        listed = isinstance(value, list | tuple)
        items = value if self.many and listed else [value]
        if self.many != listed or not all(map(self._typed, items)):
            raise ValueError(f"{name}={value!r} is invalid: it must be {self.describe()}")
        if not all(map(self._within, items)):
            raise ValueError(f"{name}={value!r} is out of range: it must be {self.describe()}")


@dataclass(frozen=True)
class Words:
    """A list of non-empty strings, each one of ``choices`` when given (``empty``: the list may be
    empty)."""

    empty: bool = True
    choices: tuple[str, ...] = ()

    def check(self, name: str, value: Any) -> None:
        names = isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value)
        known = names and (not self.choices or set(value) <= set(self.choices))
        if known and (value or self.empty):
            return
        what = f"{'a' if self.empty else 'a non-empty'} list of "
        what += f"names among {', '.join(self.choices)}" if self.choices else "names"
        raise ValueError(f"{name}={value!r} is invalid: it must be {what}")


@dataclass(frozen=True)
class Methods:
    """A list of skip methods: built-in names, installed entry points or ``package.module:Name``
    (each resolved to its rule class, so one that does not import or is not a rule is named
    before anything loads); ``empty``: the list may be empty."""

    empty: bool = False

    def check(self, name: str, value: Any) -> None:
        from ..skip.rules import rule_class

        Words(empty=self.empty).check(name, value)
        for method in value:
            try:
                rule_class(method)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None


@dataclass(frozen=True)
class Choice:
    """One of ``choices``."""

    choices: tuple[str, ...]

    def check(self, name: str, value: Any) -> None:
        if value not in self.choices:
            raise ValueError(f"{name}={value!r} is unknown; choose one of {', '.join(self.choices)}")


Rule = Number | Words | Methods | Choice


def option(default: Any, help: str, check: Rule | None = None, **cli: Any) -> Any:
    """A field of an options dataclass: its default, its help line (for the CLI, where ``cli``
    holds any argparse settings of its own) and the check its values pass."""
    return dataclasses.field(default=default, metadata={"help": help, "check": check, "cli": cli})


def check_options(options: Any, spell: Callable[[str], str] = str) -> None:
    """Check every field of an options dataclass that has a check; ``spell`` names an option as its
    user wrote it (``--new-tokens``, ``bench.new_tokens``)."""
    for f in dataclasses.fields(options):
        if (rule := f.metadata.get("check")) is not None:
            rule.check(spell(f.name), getattr(options, f.name))


def unknown_options(kind: type, given: Mapping[str, Any], where: str) -> None:
    """ValueError naming the keys of ``given`` that are not fields of the options ``kind``."""
    valid = sorted(f.name for f in dataclasses.fields(kind))
    if unknown := sorted(set(given) - set(valid)):
        raise ValueError(f"{where}: unknown options {', '.join(unknown)}; valid: {', '.join(valid)}")


def flag(name: str) -> str:
    """The CLI flag of a keyword argument: ``new_tokens`` -> ``--new-tokens``."""
    return "--" + name.replace("_", "-")


def check_all(
    rules: Mapping[str, Rule], values: Mapping[str, Any], spell: Callable[[str], str] = str
) -> None:
    """Check every value that has a rule; ``spell`` names an option as its user wrote it."""
    for name, rule in rules.items():
        if name in values:
            rule.check(spell(name), values[name])


def numbers(option: str, text: str, rule: Number) -> list[Any]:
    """A comma-separated CLI value (``"0.25,0.5"``; ``""``: none) as the list ``rule`` allows."""
    try:
        values = [rule.kind(item) for item in text.split(",") if item.strip()]
        rule.check(option, values)
    except ValueError:
        raise ValueError(
            f"{option}={text!r} is invalid: it must be {rule.describe()}, comma-separated"
        ) from None
    return values
