"""The skip mechanism. The settings (``settings.py``) and their resolution for a depth
(``layout.py``) choose a rule by its method name; the rules follow one contract (``rule.py``),
the built-ins one module each in ``rules/``, found through its registry (``rules/__init__.py``,
which also finds rules outside the package). The engines make a stock HF decoder skip what a
rule decides: FFN blocks (``engine.py``, filling ``rows.py``'s per-pass record; ``adapters.py``,
``hooks.py``) or whole layers (``layerskip.py``); warm-up is counted in ``steps.py``, what was
skipped in ``stats.py``. ``hf_compat.py`` is the one place that reads transformers' calling
conventions; ``naming.py`` names configurations. Imports nothing from the rest of the package,
nor lm-eval; this module and the registry stay import-light (the package's ``.pth`` hook imports
them in every interpreter)."""

from typing import Any

from .rules import BUILTINS, methods

LAYER_METHODS: tuple[str, ...] = tuple(name for name, rule in BUILTINS.items() if rule.skips_layers)


def __getattr__(name: str) -> Any:
    """``METHODS``: the built-ins, then installed entry points, read when asked for (not at every
    interpreter start, and current after a package is installed)."""
    if name == "METHODS":
        return methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
