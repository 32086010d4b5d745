"""The settings of one skip run (``SkipPolicy``), validated on construction, and their coercion
from lm-eval's model_args strings.

A *token* is one position processed by the model. Padding is never eligible for skipping.
Without ``skip_prompt`` the prompt runs the full model and so do the first ``warmup`` decoding
steps after it; with ``skip_prompt`` the first ``warmup`` positions of the sequence run full and
every later position is eligible, so one forward pass over a sequence decides exactly what
token-by-token decoding of it decides. With ``refresh_every=N`` every N-th eligible token runs
full as well. What an eligible token skips is its method's rule (``rule.py``; the built-ins in
``rules/``), chosen by ``method``.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .layout import LayerLayout
from .rules import rule_class

if TYPE_CHECKING:
    from .rule import Rule

# ``threshold`` values that switch ffnskip's trigger, cos(h, h + FFN) lying in [-1, 1]
ALWAYS = -1.0  # fires at the first check: every eligible token skips its k FFNs
CHECKS_ONLY = 1.0  # every check runs, none fires (short of an FFN output along h)
NEVER = 2.0  # above every cosine: no check runs, nothing is skipped (the engine's overhead alone)


@dataclass(frozen=True)
class SkipPolicy:
    """Settings of one skip run, validated on construction (depth-free checks only; ``layout``
    checks a depth)."""

    # a built-in name (``rules.BUILTINS``), an installed entry point of ``lmeval_ffnskip.methods``,
    # or ``package.module:Name``
    method: str = "ffnskip"
    threshold: float = 0.9
    warmup: int = 25
    cold_start: int | None = None
    cold_end: int | None = None
    target_skip: float = 0.25
    refresh_every: int = 0
    skip_prompt: bool = False
    seed: int = 1234
    horizon: int = 128  # skipdecode: decoding steps over which the bypassed count grows to 2n
    # spread: per-layer (mean, std) of cos(h, h + FFN) on calibration text; set from a profile
    calibration: tuple[tuple[float, float], ...] | None = None
    # shortgpt: per-layer Block Influence on calibration text (measured, cached per model)
    influence: tuple[float, ...] | None = None
    # the method's own settings: an instance of its rule's ``Options`` (None: their defaults)
    options: Any = None

    def __post_init__(self) -> None:
        rule = rule_class(self.method)
        if not ALWAYS <= self.threshold:
            raise ValueError(
                f"threshold={self.threshold} is out of range: use a cosine similarity >= {ALWAYS:g} "
                f"(values above {CHECKS_ONLY:g} never fire, which disables skipping)"
            )
        if not 0.0 <= self.target_skip <= 1.0:
            raise ValueError(f"target_skip={self.target_skip} is out of range [0, 1]")
        if self.horizon < 1:
            raise ValueError(f"horizon={self.horizon} is out of range: it must be >= 1")
        for name in ("warmup", "refresh_every", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} is out of range: it must be >= 0")
        for name in ("cold_start", "cold_end"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}={value} is out of range: it must be >= 0")
        if self.refresh_every == 1:
            raise ValueError("refresh_every=1 would run every token full; use 0 (off) or >= 2")
        rule.check(self)

    @property
    def rule(self) -> type[Rule]:
        """The rule class of ``method``."""
        return rule_class(self.method)

    def layout(self, n_layers: int) -> LayerLayout:
        """Resolve depth-dependent settings for a model with ``n_layers`` decoder layers; raises
        ValueError where the method cannot do what the settings ask at that depth."""
        return self.rule.layout_for(self, n_layers)

    @classmethod
    def from_args(cls, args: Mapping[str, object]) -> SkipPolicy:
        """Build from lm-eval style model_args values (strings, ints, floats or bools): the
        policy's fields and the method's own settings (its rule's ``Options``). A key that is
        neither, or names a field no model_arg can set (``calibration``, ...), is refused."""
        method = str(args.get("method", cls.method))
        fields, options = _settable(method)
        if unknown := sorted(set(args) - set(fields) - set(options)):
            raise ValueError(
                f"unknown settings for method={method}: {', '.join(unknown)}; "
                f"valid: {', '.join(setting_names(method))}"
            )
        values: dict[str, object] = {k: _coerce(k, raw, fields[k]) for k, raw in args.items() if k in fields}
        chosen = {k: _coerce(k, raw, options[k]) for k, raw in args.items() if k in options}
        if chosen:
            values["options"] = rule_class(method).Options(**chosen)
        return cls(**values)


def setting_names(method: str) -> tuple[str, ...]:
    """The model_args ``SkipPolicy.from_args`` takes for ``method``: the policy's settable fields,
    then the rule's own settings."""
    fields, options = _settable(method)
    return (*(k for k, hint in fields.items() if _coercer(hint)), *options)


def _settable(method: str) -> tuple[dict[str, object], dict[str, object]]:
    """Type hints of the policy's fields and of ``method``'s own settings (none may shadow a field)."""
    fields = typing.get_type_hints(SkipPolicy)
    own = rule_class(method).Options
    options = typing.get_type_hints(own) if own else {}
    if clash := sorted(set(options) & set(fields)):
        raise ValueError(f"method={method}: its Options reuse the policy's settings {', '.join(clash)}")
    return fields, options


def _coerce(name: str, raw: object, hint: object) -> object:
    """``raw`` (a model_arg value) as the type ``hint`` names; None where the hint allows it and
    ``raw`` is None or ``"none"``."""
    coerce = _coercer(hint)
    if coerce is None:
        raise ValueError(f"{name} cannot be set from model_args: it is a {hint}")
    kind, optional = coerce
    if optional and (raw is None or (isinstance(raw, str) and raw.strip().lower() == "none")):
        return None
    try:
        return _PARSERS[kind](raw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from err


def _coercer(hint: object) -> tuple[type, bool] | None:
    """(the type a model_arg string is parsed as, whether None is allowed), or None where the
    hint is not one of ``_PARSERS``' types, alone or with None."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds = typing.get_args(hint) if union else (hint,)
    named = [k for k in kinds if k is not type(None)]
    if len(named) != 1 or named[0] not in _PARSERS:
        return None
    return named[0], len(named) < len(kinds)


def to_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ValueError(raw)


def _to_int(raw: object) -> int:
    if isinstance(raw, float) and not raw.is_integer():
        raise ValueError(raw)
    return int(raw)


_PARSERS: dict[type, Callable[[Any], object]] = {bool: to_bool, int: _to_int, float: float, str: str}
