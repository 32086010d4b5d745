"""The name of a skip configuration, ``method-target`` (``ffnskip-0.25``), by which bench,
fidelity, flops, sweep cells and the report match results files."""

from __future__ import annotations

import re

# a target as ``:g`` writes it, ending the method part of a name (or followed by more parts)
_TARGET = re.compile(r"-(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?(?=-|$)")


# the configuration every other is compared with, in every JSON and sweep (``method=dense``)
DENSE = "dense"
# the paper's rule (FFN-SkipLLM), which the report's summary and speed charts single out
PAPER = "ffnskip"


def config_name(method: str, target: float) -> str:
    """``method`` at ``target_skip=target``."""
    return f"{method}-{target:g}"


def method_of(name: str) -> str:
    """The method a configuration name starts with: ``config_name``'s inverse (a name without a
    target, ``dense``, is its method); the first ``-number`` part ends it."""
    found = _TARGET.search(name)
    return name[: found.start()] if found else name
