"""Each instrument's options, one frozen dataclass each: a field's default, help and check are the
option's one definition (``inputs.options.option``), read by the CLI's flags, a sweep config's
checks and the instrument's run function. Kept light (no torch): the CLI and the sweep check
options before anything loads. ``check`` raises ValueError in one line, ``spell`` naming an option
as its user wrote it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..inputs.checkpoints import DEFAULT_MODEL
from ..inputs.options import Choice, Methods, Number, check_options, option
from ..skip.policy import ALWAYS, PolicyFields
from .shapes import SHAPES

Spell = Callable[[str], str]
# what ``ffnskip bench`` speedups compare: a per-step percentile, or the median run's decode time
SPEED_STATS = {"p50": "latency_ms_p50", "p10": "latency_ms_p10", "run": "decode_seconds"}
SOURCES = ("wikitext", "continuations")  # ``ffnskip fidelity``'s text
_TARGETS = Number(float, 0, 1, many=True)
_THRESHOLD = Number(float, ALWAYS)


@dataclass(frozen=True)
class ModelOptions:
    """The model an instrument measures, and where."""

    pretrained: str = option(DEFAULT_MODEL, "embedded alias, HF id or local dir")
    device: str = option("cpu", "torch device")

    def check(self, spell: Spell = str) -> None:
        """Every option's check, then what options check together."""
        check_options(self, spell)


@dataclass(frozen=True)
class CalibrationText:
    """What calibration measures on: prompts (WikiText-2 articles, alternate ones held out) and
    decoding; ``tolerance``: how close to the target the predicted ratio must come."""

    prompts: int = option(8, "calibration (and held-out) prompts", Number(int, 1))
    prompt_tokens: int = option(48, "tokens per prompt", Number(int, 1))
    # the prefill, then at least one decoding step to measure
    new_tokens: int = option(48, "greedy tokens generated per prompt", Number(int, 2))
    tolerance: float = option(
        0.01, "predicted ratio within this of the target on calibration prompts", Number(float, 0, 1)
    )


@dataclass(frozen=True)
class CalibrateOptions(CalibrationText, ModelOptions):
    """``ffnskip calibrate``: the similarity curve, and settings for a target skip ratio."""

    target: float = option(PolicyFields.target_skip, "target skip ratio", Number(float, 0, 1, open=True))

    @property
    def text(self) -> CalibrationText:
        return CalibrationText(self.prompts, self.prompt_tokens, self.new_tokens, self.tolerance)


def check_shape(shape: str | None, thin: bool, methods: Sequence[str], spell: Spell = str) -> None:
    """A shape model, where asked for, is a shipped one and its methods do not need real weights."""
    from ..skip.rules import rule_class
    from ..skip.settings import SkipPolicy

    if thin and shape is None:
        raise ValueError(f"thin widths apply to a shape model: pass {spell('shape')} with {spell('thin')}")
    if shape is None:
        return
    if shape not in SHAPES:
        raise ValueError(f"{spell('shape')}={shape!r} is unknown; shipped shapes: {', '.join(SHAPES)}")
    # a shape's configurations force ffnskip's trigger (threshold ALWAYS); a rule that still
    # decides from the weights' values would measure random weights
    weighed = [m for m in methods if rule_class(m).depends_on_weights(SkipPolicy(method=m, threshold=ALWAYS))]
    if weighed:
        raise ValueError(
            f"methods {','.join(weighed)} decide from the weights, which shape models have at random; "
            "use methods whose decisions do not (ffnskip, static, random, skipdecode)"
        )


@dataclass(frozen=True)
class ShapeOptions(ModelOptions):
    """A model named by ``pretrained``, or a shipped shape with random weights."""

    shape: str | None = option(
        None,
        "instead of --pretrained: a shipped architecture with random weights (ffnskip's trigger forced "
        "at its first check; methods: ffnskip, static, random, skipdecode), one of " + ", ".join(SHAPES),
    )
    thin: bool = option(
        False,
        "with --shape: keep its depth and operations, shrink every width, so each operation costs about "
        "its dispatch (a launch-bound GPU's regime, on any device)",
    )


@dataclass(frozen=True)
class FlopsOptions(ShapeOptions):
    """``ffnskip flops``: one decoding step's FLOPs by part, dense and as measured patterns skip."""

    context: int = option(512, "positions the new token attends to", Number(int, 2))
    targets: tuple[float, ...] = option((0.25, 0.5), "target_skip values to measure ('' for none)", _TARGETS)
    methods: tuple[str, ...] = option(("ffnskip",), "methods run at each target", Methods(empty=True))
    threshold: float = option(PolicyFields.threshold, "ffnskip threshold", _THRESHOLD)
    # the prefill, then at least one decoding step to skip in
    new_tokens: int = option(64, "greedy tokens generated per pattern", Number(int, 2))
    results: tuple[Path, ...] = option((), "lm-eval results JSON of ffnskip runs", nargs="*", type=Path)

    def check(self, spell: Spell = str) -> None:
        """Also: the shape (``check_shape``)."""
        super().check(spell)
        check_shape(self.shape, self.thin, self.methods, spell)


@dataclass(frozen=True)
class BenchOptions(ShapeOptions):
    """``ffnskip bench``: decode speed of every configuration at every batch size, beside the ideal."""

    dtype: str = option("float32", "torch dtype of the weights")
    batch_sizes: tuple[int, ...] = option((1, 8), "batch sizes", Number(int, 1, many=True))
    targets: tuple[float, ...] = option((0.05, 0.25, 0.5), "target_skip values", _TARGETS)
    methods: tuple[str, ...] = option(("ffnskip",), "methods run at each target", Methods(empty=True))
    threshold: float = option(PolicyFields.threshold, "ffnskip threshold", _THRESHOLD)
    # the prefill, then at least one decoding step to time
    new_tokens: int = option(128, "tokens generated per run", Number(int, 2))
    reps: int = option(3, "runs per configuration", Number(int, 1))
    stat: str = option(
        "p50",
        "time that speedups compare: per-step median, per-step lower decile (least disturbed by a "
        "loaded machine), or the median run's decode time",
        Choice(tuple(SPEED_STATS)),
    )
    lockstep: bool = option(
        False,
        "decode all configurations in turns, pass by pass, instead of one generate each: times the "
        "forward passes alone, paired in time (steadier on a machine whose speed drifts)",
    )
    compile: bool = option(
        False,
        "add the compiled path's rows (static KV cache, one compiled step per token, skipping decided "
        "inside it; methods with a device form), each row with its path",
    )
    overheads: bool = option(
        True,
        "leave out ffnskip-off and checks-only (the rows that measure the engine's own costs), e.g. "
        "to fit a time limit",
    )

    def check(self, spell: Spell = str) -> None:
        """Also: the dtype is one torch has, and the shape (``check_shape``)."""
        from ..inputs.checkpoints import torch_dtype

        super().check(spell)
        torch_dtype(self.dtype)
        check_shape(self.shape, self.thin, self.methods, spell)


@dataclass(frozen=True)
class FidelityOptions(ModelOptions):
    """``ffnskip fidelity``: teacher-forced agreement with dense and perplexity."""

    methods: tuple[str, ...] = option(("ffnskip", "static", "random"), "methods", Methods(empty=True))
    targets: tuple[float, ...] = option((0.1, 0.25, 0.4), "target_skip values", _TARGETS)
    threshold: float = option(PolicyFields.threshold, "ffnskip threshold", _THRESHOLD)
    cold_start: int | None = option(
        None, "cold layers at the start, every method", Number(int, 0, optional=True)
    )
    cold_end: int | None = option(None, "cold layers at the end, every method", Number(int, 0, optional=True))
    source: str = option("wikitext", "text scored: WikiText-2, or dense's own continuations", Choice(SOURCES))
    sequences: int = option(8, "sequences scored", Number(int, 1))
    length: int = option(256, "tokens per sequence", Number(int, 2))
    warmup: int = option(32, "leading positions run full, not scored", Number(int, 0))

    def check(self, spell: Spell = str) -> None:
        super().check(spell)
        if self.length <= self.warmup + 1:
            raise ValueError(
                f"{spell('length')}={self.length} is out of range: it must exceed {spell('warmup')} + 1 = "
                f"{self.warmup + 1} (the positions after the warm-up are scored)"
            )
        if self.source == "continuations" and self.warmup == 0:
            raise ValueError(f"{spell('warmup')}=0 is out of range: continuations need a prompt, warmup >= 1")
