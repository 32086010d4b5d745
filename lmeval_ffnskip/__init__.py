"""FFN-SkipLLM for lm-evaluation-harness: skip FFN blocks during decoding, measure the cost.

Kept import-light (the install-time ``.pth`` hook imports this package in every interpreter):
the torch-backed names below load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

METHODS: tuple[str, ...] = ("ffnskip", "spread", "dense", "random", "static", "shortgpt", "skipdecode")
LAYER_METHODS: tuple[str, ...] = ("shortgpt", "skipdecode")  # whole layers skipped (layerskip.py)

_LAZY = {
    "SkipPolicy": "policy",
    "SkipEngine": "engine",
    "attach": "engine",
    "SkipStats": "stats",
    "FFNSkipLM": "lm",
}
__all__ = ["LAYER_METHODS", "METHODS", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
