"""The skip policy: which token skips which FFN block (``spread``'s rule lives in ``spread.py``).

A *token* is one position processed by the model. Per token:

1. Eligibility. Padding is never eligible. Without ``skip_prompt`` the prompt runs the full
   model and so do the first ``warmup`` decoding steps after it; with ``skip_prompt`` the
   first ``warmup`` positions of the sequence run full and every later position is eligible,
   so one forward pass over a sequence decides exactly what token-by-token decoding of it
   decides. With ``refresh_every=N`` every N-th eligible token runs full as well.
2. The rule, for an eligible token (``k = round(target_skip * n_layers)``):

   - ``ffnskip`` (the paper's Algorithm 1): the first ``cold_start`` and last ``cold_end``
     layers always run their FFN. In the layers between ("non-cold"), the FFN runs and the
     cosine similarity of the residual stream before and after it, cos(h, h + FFN(h)), is
     measured; once it reaches ``threshold`` the FFNs of the next k non-cold layers are
     skipped, which spends the token's budget.
   - ``spread`` (ours; the paper's trigger made to work on small models): one skip per group
     of non-cold layers, each token with its own cut, placed by per-layer calibrated levels:
     see ``spread.py``.
   - ``random`` (the paper's Baseline 1): k FFNs skipped at random among all layers.
   - ``static`` (the paper's Baseline 2): k FFNs skipped at random among the non-cold layers.
   - ``dense``: nothing is skipped.
   - ``shortgpt`` and ``skipdecode``, the layer-skip baselines of the paper's Table 2, skip whole
     layers (attention too) at the same share of compute: see ``layerskip.py``.

   Random draws (and ``spread``'s cut) depend on ``seed`` and the token's position only, so a
   sequence gets the same draw at any batch size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from . import LAYER_METHODS, METHODS
from .hf_compat import PassTokens
from .rows import PassSkips
from .spread import SpreadRule, hot_layers

RANDOM_METHODS = ("random", "static")


def default_cold(n_layers: int) -> int:
    """Cold layers at each end, scaled to depth: the authors' 5 of 40, at least 1."""
    return max(1, round(n_layers / 8))


@dataclass(frozen=True)
class SkipPolicy:
    """Settings of one skip run, validated on construction (depth-free checks only)."""

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

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is unknown; choose one of {', '.join(METHODS)}")
        if not -1.0 <= self.threshold:
            raise ValueError(
                f"threshold={self.threshold} is out of range: use a cosine similarity >= -1 "
                "(values above 1 never fire, which disables skipping)"
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
        if self.method in LAYER_METHODS and self.refresh_every:
            raise ValueError(
                f"refresh_every does not apply to method={self.method}: a layer it skipped has no KV "
                "for that token, so it can never run full again; use refresh_every=0"
            )

    @classmethod
    def from_args(cls, args: dict[str, object]) -> SkipPolicy:
        """Build from lm-eval style model_args values (strings, ints, floats or bools)."""
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            if f.name not in args:
                continue
            raw = args[f.name]
            kind = f.type.split(" |")[0]
            try:
                if raw is None or (isinstance(raw, str) and raw.lower() == "none"):
                    values[f.name] = None
                elif kind == "bool":
                    values[f.name] = _to_bool(raw)
                elif kind in ("int", "float", "str"):
                    values[f.name] = {"int": _to_int, "float": float, "str": str}[kind](raw)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{f.name}={raw!r} is not a valid {kind}") from err
        return cls(**values)

    def layout(self, n_layers: int) -> LayerLayout:
        """Resolve depth-dependent settings for a model with ``n_layers`` decoder layers."""
        cold_start = default_cold(n_layers) if self.cold_start is None else self.cold_start
        cold_end = default_cold(n_layers) if self.cold_end is None else self.cold_end
        if cold_start + cold_end > n_layers:
            raise ValueError(
                f"cold_start={cold_start} + cold_end={cold_end} exceeds the model's {n_layers} layers"
            )
        k = round(self.target_skip * n_layers) if self.method != "dense" else 0
        n_mid = n_layers - cold_start - cold_end
        hot: tuple[int, ...] = ()
        if self.method == "spread":
            if self.calibration is None or len(self.calibration) != n_layers:
                raise ValueError(
                    "method=spread needs the per-layer similarity of a calibration of this model: "
                    "pass profile=auto (calibrate once, cached) or profile=PATH (ffnskip calibrate)"
                )
            mean, std = zip(*self.calibration, strict=True)
            hot = tuple(i for i in hot_layers(list(mean), list(std)) if cold_start <= i < n_layers - cold_end)
        limit = {"ffnskip": n_mid - 1, "spread": n_mid - len(hot), "static": n_mid, "random": n_layers}
        if self.method not in LAYER_METHODS and k > max(limit.get(self.method, 0), 0):
            raise ValueError(
                f"target_skip={self.target_skip} asks for {k} of {n_layers} FFNs per token, but "
                f"method={self.method} can skip at most {max(limit[self.method], 0)} with "
                f"cold_start={cold_start}, cold_end={cold_end}; lower target_skip or the cold layers"
            )
        return LayerLayout(n_layers, cold_start, cold_end, k, self.method, hot)

    def eligible(self, since: list[int], real: list[bool]) -> list[bool]:
        """Tokens the rule applies to. ``since``: steps from where warm-up counting starts."""
        if self.method == "dense":
            return [False] * len(real)
        warmup, every = self.warmup, self.refresh_every
        return [
            ok and step >= warmup and not (every and (step - warmup + 1) % every == 0)
            for step, ok in zip(since, real, strict=True)
        ]


class StepCounter:
    """Where each row's warm-up counting starts, across the passes of a generation: at its first
    position with ``skip_prompt``, else at its first generated token. Counts the decoding passes
    (over a filled KV cache) it saw, which callers check against the tokens they generated."""

    def __init__(self, skip_prompt: bool) -> None:
        self.skip_prompt = skip_prompt
        self.prompt_lengths: list[int] | None = None  # [batch] real prompt tokens per row
        self.decoding_passes = 0

    def since(self, tokens: PassTokens) -> list[int]:
        """Steps of each token ([batch * length]) from where counting starts (negative: prompt)."""
        if tokens.past and tokens.length > 1 and not self.skip_prompt:
            raise NotImplementedError(
                f"a pass of {tokens.length} tokens over {tokens.past} cached positions (chunked "
                "prefill or assisted decoding) cannot be told apart from generated tokens; prefill "
                "in one pass, decode one token per pass, or set skip_prompt=true"
            )
        if tokens.past:
            self.decoding_passes += 1
        if tokens.past == 0 or self.prompt_lengths is None or len(self.prompt_lengths) != tokens.batch:
            # a pass over a cache this counter did not fill: its contents count as the prompt
            if tokens.past == 0:
                n = tokens.length
                self.prompt_lengths = [sum(tokens.real[i : i + n]) for i in range(0, len(tokens.real), n)]
            else:
                self.prompt_lengths = tokens.before
        if self.skip_prompt:
            return tokens.pos
        n = tokens.length
        return [p - self.prompt_lengths[i // n] for i, p in enumerate(tokens.pos)]


def _to_bool(raw: object) -> bool:
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


@dataclass(frozen=True)
class LayerLayout:
    """Depth-resolved policy: the non-cold range, k (FFNs skipped per eligible token) and the
    layers each method can touch, so the engine hooks no other layer."""

    n_layers: int
    cold_start: int
    cold_end: int
    k: int
    method: str = "ffnskip"
    hot: tuple[int, ...] = ()  # spread: non-cold layers that always run

    @property
    def mid(self) -> range:
        """The non-cold layers."""
        return range(self.cold_start, self.n_layers - self.cold_end)

    @property
    def checked(self) -> range:
        """Layers whose similarity the method measures: for ``ffnskip`` all non-cold ones but the
        last; for ``spread`` also the layer before them (it can pick the first non-cold FFN)."""
        mid = self.mid
        if self.method == "spread" and self.k:
            return range(max(mid.start - 1, 0), mid.stop - 1)
        return range(mid.start, mid.stop - 1) if self.method == "ffnskip" else range(0)

    @property
    def skippable(self) -> range:
        """Layers whose FFN the method can skip."""
        mid = self.mid
        return {
            "ffnskip": range(mid.start + 1, mid.stop),
            "spread": mid,
            "static": mid,
            "random": range(self.n_layers),
        }.get(self.method, range(0))

    def groups(self) -> list[list[int]]:
        """``spread``: the non-cold, non-hot layers cut into k contiguous groups of near-equal size."""
        layers = [i for i in self.mid if i not in self.hot]
        n, k = len(layers), self.k
        return [layers[(g * n) // k : ((g + 1) * n) // k] for g in range(k)]


class TokenRule(PassSkips):
    """Skip decisions for the N tokens of one forward pass, made layer by layer on the host.

    Decisions are filled in as they become known: up front for the random baselines, and for
    ``ffnskip`` when the similarity measured at a layer reaches the threshold for a token. All of
    it is plain lists of row numbers (``checking``: the rows still looking for their trigger;
    per layer, the rows skipping it), so at batch 1 the bookkeeping costs next to nothing.
    """

    def __init__(
        self,
        policy: SkipPolicy,
        layout: LayerLayout,
        eligible: list[bool],
        positions: list[int],
        draws: RandomDraws | None,
    ) -> None:
        super().__init__(eligible, layout.n_layers)
        self.threshold, self.layout = policy.threshold, layout
        searching = layout.method == "ffnskip" and layout.k > 0 and policy.threshold <= 1.0
        self.checking: list[int] = self.rows if searching else []
        # ffnskip rows that cannot fire (no budget, threshold above 1)
        self._never = self.rows if layout.method == "ffnskip" and not searching else []
        if draws is not None and layout.k:
            for row in self.rows:
                for layer in draws.take(positions[row]):
                    self._skip(layer, [row])
        self._checked = layout.checked

    def idle(self) -> bool:
        """Whether this pass has nothing to decide: no row skips and none is looking for a trigger."""
        return not self.checking and not self._skipping

    def enter(self, layer: int) -> None:
        """Called before ``layer``'s FFN; ffnskip's decisions are all made in ``measured``."""

    def checks_at(self, layer: int) -> bool:
        """Whether similarity is measured at ``layer`` (for the rows in ``self.checking``)."""
        return bool(self.checking) and layer in self._checked

    def measured(self, layer: int, rows: list[int], cosines: list[float]) -> None:
        """cos(h, h + FFN) of ``rows`` at ``layer``; rows reaching the threshold skip the next k FFNs."""
        fired = [row for row, cos in zip(rows, cosines, strict=True) if cos >= self.threshold]
        if not fired:
            return
        done = set(fired)
        self.checking = [row for row in self.checking if row not in done]
        for j in range(layer + 1, min(layer + 1 + self.layout.k, self.layout.mid.stop)):
            self._skip(j, fired)

    def never_fired(self) -> int:
        """Eligible tokens of an ``ffnskip`` pass whose similarity never reached the threshold."""
        return len(self._never) + len(self.checking)

    def never_rows(self) -> list[int]:
        return self._never + self.checking


def token_rule(
    policy: SkipPolicy,
    layout: LayerLayout,
    eligible: list[bool],
    positions: list[int],
    draws: RandomDraws | None,
) -> TokenRule | SpreadRule:
    """The per-pass decision maker for ``policy``'s method."""
    if policy.method == "spread":
        return SpreadRule(policy, layout, eligible, positions)
    return TokenRule(policy, layout, eligible, positions, draws)


class RandomDraws:
    """Per-position random FFN choices for the baselines, from a seeded table grown on demand."""

    def __init__(self, policy: SkipPolicy, layout: LayerLayout) -> None:
        self.k = layout.k
        self.allowed = torch.zeros(layout.n_layers, dtype=torch.bool)
        if policy.method == "static":
            self.allowed[layout.mid.start : layout.mid.stop] = True
        else:
            self.allowed[:] = True
        self.generator = torch.Generator().manual_seed(policy.seed)
        self.table: list[list[int]] = []  # position -> the layers it skips

    def take(self, position: int) -> list[int]:
        """The layers skipped at absolute ``position``."""
        if position >= len(self.table):
            rows = max(position + 1, 2 * len(self.table), 256) - len(self.table)
            scores = torch.rand(rows, len(self.allowed), generator=self.generator)
            scores[:, ~self.allowed] = 2.0
            self.table += scores.topk(self.k, dim=1, largest=False).indices.sort(dim=1).values.tolist()
        return self.table[position]
