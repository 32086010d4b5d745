"""FFN-SkipLLM for lm-evaluation-harness: skip FFN blocks during decoding, measure the cost.

Kept import-light (the install-time ``.pth`` hook imports this package in every interpreter):
the torch-backed names below load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .skip import LAYER_METHODS

_LAZY = {
    "METHODS": "skip",
    "SkipPolicy": "skip.settings",
    "SkipEngine": "skip.engine",
    "attach": "skip.engine",
    "SkipStats": "skip.stats",
    "FFNSkipLM": "harness.lm",
}
__all__ = ["LAYER_METHODS", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
