"""The registry of skip rules: a method name -> its rule class (the contract: ``skip/rule.py``).

A name is found, in this order, among the built-ins (``BUILTINS``: one module of this folder
each, imported on first use), as ``package.module:Name`` (imported), or among the entry points
of the group ``lmeval_ffnskip.methods`` that installed packages declare (``name =
"package.module:Name"`` under ``[project.entry-points."lmeval_ffnskip.methods"]``). Adding a
built-in is one module here and its line in ``BUILTINS``.

Kept import-light (the package's ``METHODS`` come from here when it is imported): no rule module
is imported until its rule is asked for, and the entry points are read from package metadata only.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from ..rule import FFNRule, LayerRule, Rule

ENTRY_POINTS = "lmeval_ffnskip.methods"


@dataclass(frozen=True)
class Builtin:
    """Where a built-in rule lives (``module:Class`` in this folder), and whether it skips whole
    layers (known without importing it; ``tests/test_rules.py`` checks it against the class)."""

    where: str
    skips_layers: bool = False


BUILTINS: dict[str, Builtin] = {
    "ffnskip": Builtin("ffnskip:FFNSkip"),
    "spread": Builtin("spread:Spread"),
    "dense": Builtin("dense:Dense"),
    "random": Builtin("random:RandomSkip"),
    "static": Builtin("static:StaticSkip"),
    "shortgpt": Builtin("shortgpt:ShortGPT", skips_layers=True),
    "skipdecode": Builtin("skipdecode:SkipDecode", skips_layers=True),
}


def methods() -> tuple[str, ...]:
    """The method names known without a ``module:`` path: the built-ins, then the names of
    installed entry points (a built-in name wins over an entry point of the same name)."""
    installed = sorted({ep.name for ep in entry_points(group=ENTRY_POINTS)} - set(BUILTINS))
    return (*BUILTINS, *installed)


@functools.cache
def rule_class(method: str) -> type[Rule]:
    """The rule class of ``method``; ValueError with one line naming what failed where it does
    not import or is not a rule."""
    if method in BUILTINS:
        module, _, name = BUILTINS[method].where.partition(":")
        found = _load(method, f"{__name__}.{module}", name)
    elif ":" in method:
        module, _, name = method.partition(":")
        found = _load(method, module, name)
    else:
        point = next((ep for ep in entry_points(group=ENTRY_POINTS) if ep.name == method), None)
        if point is None:
            raise ValueError(
                f"method={method!r} is unknown; choose one of {', '.join(methods())}, "
                "or name a rule class as package.module:Name"
            )
        try:
            found = point.load()
        except Exception as err:
            raise ValueError(
                f"method={method!r}: entry point {point.value!r} does not load: {_first_line(err)}"
            ) from err
    return _checked(method, found)


def traits(method: str) -> dict[str, Any]:
    """What results files record of ``method``'s rule (``config["ffnskip"]["rule"]``), so that
    reports and gates read it without importing the rule: where it lives and what it declares."""
    rule = rule_class(method)
    return {
        "rule": f"{rule.__module__}:{rule.__qualname__}",
        "skips_layers": rule.skips_layers,
        "reference": rule.reference,
        "threshold_trigger": rule.threshold_trigger,
        "needs": sorted(rule.needs),
    }


def known_traits(method: str) -> dict[str, Any]:
    """``traits`` of ``method``; for a rule this machine cannot import (results made elsewhere),
    one that declares nothing: a method skipping FFN blocks."""
    try:
        return traits(method)
    except ValueError:
        declared = dict.fromkeys(("skips_layers", "reference", "threshold_trigger"), False)
        return {**declared, "rule": None, "needs": []}


def _load(method: str, module: str, name: str) -> object:
    """``name`` (dotted: an attribute path) from ``module``."""
    try:
        found: object = importlib.import_module(module)
    except Exception as err:
        raise ValueError(f"method={method!r}: module {module!r} does not import: {_first_line(err)}") from err
    for part in name.split("."):
        if not hasattr(found, part):
            raise ValueError(f"method={method!r}: module {module!r} has no {name!r}")
        found = getattr(found, part)
    return found


def _checked(method: str, found: object) -> type[Rule]:
    """``found`` if it is a concrete rule class."""
    if not (isinstance(found, type) and issubclass(found, FFNRule | LayerRule)):
        raise ValueError(
            f"method={method!r} is {found!r}, not a skip rule: a subclass of "
            "lmeval_ffnskip.skip.rule.FFNRule or LayerRule"
        )
    if inspect.isabstract(found):
        missing = ", ".join(sorted(found.__abstractmethods__))
        raise ValueError(f"method={method!r}: {found.__qualname__} does not implement {missing}")
    return found


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
