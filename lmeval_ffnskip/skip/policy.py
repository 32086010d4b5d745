"""The values of one skip run and their checks that need no rule: what a rule reads
(``rule.py``). ``settings.SkipPolicy`` adds the checks of the method's own rule and the coercion
from model_args."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# ``threshold`` values that switch ffnskip's trigger, cos(h, h + FFN) lying in [-1, 1]
ALWAYS = -1.0  # fires at the first check: every eligible token skips its k FFNs
CHECKS_ONLY = 1.0  # every check runs, none fires (short of an FFN output along h)
NEVER = 2.0  # above every cosine: no check runs, nothing is skipped (the engine's overhead alone)


@dataclass(frozen=True)
class PolicyFields:
    """Settings of one skip run, each field's one definition and default, with the checks that
    need no rule (``settings.SkipPolicy`` is what is built and passed around)."""

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
