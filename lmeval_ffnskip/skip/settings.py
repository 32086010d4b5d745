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
from .policy import PolicyFields
from .rules import rule_class

if TYPE_CHECKING:
    from .rule import Rule


@dataclass(frozen=True)
class SkipPolicy(PolicyFields):
    """Settings of one skip run, validated on construction (depth-free checks only; ``layout``
    checks a depth): the method is resolved to its rule first, then the fields' ranges
    (``PolicyFields``) and the rule's own checks."""

    def __post_init__(self) -> None:
        rule = rule_class(self.method)
        super().__post_init__()
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
