"""Decode speed of HF ``generate`` with and without FFN skipping, against the ideal bound.

Every forward pass of a ``generate`` call (the path lm-eval uses, EOS suppressed so every run
decodes the same number of tokens) is timed: the first is the prefill, each later one a
decoding step, and the decode time is the sum of the steps (``lockstep=True`` instead decodes
every configuration in turns, pass by pass, so that drift in machine speed falls on all alike).
``t_ffn`` is the decode time saved by skipping every FFN; a run that skips a share s of all FFN
blocks can at best reach ``t_dense / (t_dense - s * t_ffn)``. Speedups compare the per-step
median unless asked otherwise (``add_ideal``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import statistics
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..harness.options import Methods, Number, check_all
from ..skip.engine import attach, generate_fixed, make_engine, spanning
from ..skip.hf_compat import cache_keyword, output_cache
from ..skip.naming import DENSE, config_name
from ..skip.provenance import versions
from ..skip.rules import known_traits, rule_class
from ..skip.settings import ALWAYS, CHECKS_ONLY, NEVER, SkipPolicy
from .timing import Counts, StepClock, mark, seconds

HF_STATIC = "hf-static"  # the config and path of HF's own static-cache compiled generate

PROMPTS = (
    "The history of the printing press begins",
    "Here is a short recipe for tomato soup:",
    "The main causes of the First World War were",
    "Photosynthesis is the process by which",
    "A good way to learn a new programming language is",
    "The tallest mountains in the world are found",
    "In economics, inflation means",
    "The rules of chess say that a bishop",
)


@dataclass(frozen=True)
class Config:
    """One measured configuration; ``policy=None`` is plain HF with nothing attached."""

    name: str
    policy: SkipPolicy | None


def default_configs(
    targets: tuple[float, ...],
    threshold: float = 0.9,
    methods: tuple[str, ...] = ("ffnskip",),
    overheads: bool = True,
) -> list[Config]:
    """Plain HF, the engine with skipping off or checking only (``overheads``: the engine's own
    costs), every FFN skipped, each method per target (``spread`` and ``shortgpt`` need
    ``calibrate.with_calibration`` before use)."""
    configs = [Config("hf", None), Config(DENSE, SkipPolicy(method=DENSE))]
    if overheads:
        configs += [
            Config("ffnskip-off", SkipPolicy(threshold=NEVER, warmup=0)),
            # measures at every non-cold layer and never fires: the full cost of checks and host reads
            Config("checks-only", SkipPolicy(threshold=CHECKS_ONLY, warmup=0)),
        ]
    configs.append(Config("skip-all", SkipPolicy(method="random", target_skip=1.0, warmup=0)))
    configs += [
        Config(
            config_name(m, t),
            SkipPolicy(method=m, target_skip=t, warmup=0, threshold=threshold),
        )
        for m in methods
        for t in targets
    ]
    return configs


@contextlib.contextmanager
def _maybe_attach(model: nn.Module, policy: SkipPolicy | None, new_tokens: int) -> Iterator[object]:
    if policy is None:
        yield None
    else:
        with attach(model, spanning(policy, new_tokens)) as engine:
            yield engine


@torch.no_grad()
def _timed_generate(model: nn.Module, batch: dict, new_tokens: int) -> list[float]:
    clock = StepClock(model)
    try:
        generate_fixed(model, batch, new_tokens)
        return clock.intervals()
    finally:
        clock.close()


@torch.no_grad()
def _lockstep(
    model: nn.Module, batch: dict, configs: list[Config], sequences: dict[str, torch.Tensor]
) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Replay each configuration's own greedy continuation (``sequences``, from ``generate``)
    with the configurations taking turns pass by pass (the order rotated every pass), each with
    its own KV cache and its engine installed only for its own passes: the passes ``generate``
    makes, paired in time. Returns each one's pass times [prefill, step 1, ...] (the forward
    passes alone, without ``generate``'s per-step work) and its engine."""
    cuda = model.device.type == "cuda"
    prompt = batch["input_ids"].shape[1]
    new_tokens = next(iter(sequences.values())).shape[1] - prompt
    engines = {c.name: c.policy and make_engine(model, spanning(c.policy, new_tokens)) for c in configs}
    caches: dict[str, object] = dict.fromkeys(engines)
    marks: dict[str, list[tuple[object, object]]] = {name: [] for name in engines}
    names = list(engines)
    keyword = cache_keyword(model)
    ones = batch["attention_mask"].new_ones(len(batch["input_ids"]), new_tokens)
    for step in range(new_tokens):
        first, end = (0, prompt) if step == 0 else (prompt + step - 1, prompt + step)  # this pass's tokens
        mask = torch.cat([batch["attention_mask"], ones[:, :step]], 1)
        # as generate: positions count the real tokens, padding sits at 0
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, first:end]
        for name in names[step % len(names) :] + names[: step % len(names)]:
            ids = sequences[name][:, first:end]
            engine = engines[name]
            if engine is not None:
                engine.install()
            try:
                start = mark(cuda)
                out = model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    **{keyword: caches[name]},
                )
                marks[name].append((start, mark(cuda)))
            finally:
                if engine is not None:
                    engine.remove()
            caches[name] = output_cache(out)
    if cuda:
        torch.cuda.synchronize()
    return {name: [seconds(a, b) for a, b in pairs] for name, pairs in marks.items()}, engines


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def prompt_batch(tokenizer: object, batch_size: int, device: torch.device | str) -> dict:
    """The first ``batch_size`` bench prompts (cycled), left-padded, on ``device``."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch_size)]
    return dict(tokenizer(prompts, return_tensors="pt", padding=True).to(device))


# per configuration: pass times of each repetition, what its engine did, peak memory
Runs = tuple[dict[str, list[list[float]]], dict[str, Counts], dict[str, int | None]]


def _generate_runs(model: nn.Module, batch: dict, configs: list[Config], new_tokens: int, reps: int) -> Runs:
    """Per configuration: the pass times of each timed ``generate``, the skip ratio, peak memory."""
    runs: dict[str, list[list[float]]] = {c.name: [] for c in configs}
    counts: dict[str, Counts] = {}
    peaks: dict[str, int | None] = {}
    cuda = model.device.type == "cuda"
    for config in configs:
        with _maybe_attach(model, config.policy, 8):
            _timed_generate(model, batch, 8)
    for _ in range(reps):
        for config in configs:
            if cuda:
                torch.cuda.reset_peak_memory_stats(model.device)
            with _maybe_attach(model, config.policy, new_tokens) as engine:
                runs[config.name].append(_timed_generate(model, batch, new_tokens))
            peaks[config.name] = torch.cuda.max_memory_allocated(model.device) if cuda else None
            counts[config.name] = Counts.of(engine, new_tokens)
    return runs, counts, peaks


def _lockstep_runs(model: nn.Module, batch: dict, configs: list[Config], new_tokens: int, reps: int) -> Runs:
    """As ``_generate_runs``, every repetition one ``_lockstep`` replay of the continuations that
    a first, untimed ``generate`` per configuration made (no peak memory: the configurations'
    KV caches are all held at once)."""
    sequences = {}
    for config in configs:
        with _maybe_attach(model, config.policy, new_tokens):
            sequences[config.name] = generate_fixed(model, batch, new_tokens)
    runs: dict[str, list[list[float]]] = {c.name: [] for c in configs}
    counts: dict[str, Counts] = {}
    for _ in range(reps):
        times, engines = _lockstep(model, batch, configs, sequences)
        for config in configs:
            runs[config.name].append(times[config.name])
            counts[config.name] = Counts.of(engines[config.name], new_tokens)
    return runs, counts, dict.fromkeys(runs)


def decode_speed(
    model: nn.Module,
    batch: dict,
    configs: list[Config],
    new_tokens: int = 128,
    reps: int = 3,
    lockstep: bool = False,
    compiled: bool = False,
) -> list[dict[str, object]]:
    """Prefill and decode speed, per-token latency and peak memory of each configuration.

    Each run is one ``generate`` of ``new_tokens`` tokens (EOS suppressed) timed per forward
    pass. After one warm-up run per configuration, repetitions go round-robin over the
    configurations, so drift in machine speed (other load, clocks) spreads over all of them
    instead of biasing one. Figures are medians over repetitions; latency percentiles pool
    the decoding steps of all repetitions. With ``lockstep`` each repetition decodes all
    configurations in turns pass by pass (``_lockstep``), which pairs their steps in time: on
    a machine whose speed drifts this is the steadier comparison. ``compiled`` times the
    compiled path instead (``bench_compiled``; configurations it cannot run are left out), each
    row with the seconds its compiling calls took and how its steps were decoded.
    """
    batch_size = len(batch["input_ids"])
    prompt_tokens = int(batch["attention_mask"].sum())
    extras: dict[str, dict[str, object]] = {}
    if compiled:
        from .bench_compiled import compiled_runs, compiles, hf_static_runs

        plain = any(c.policy is None for c in configs)
        configs = [c for c in configs if compiles(c)]
        runs, counts, peaks, extras = compiled_runs(model, batch, configs, new_tokens, reps)
        if plain:  # HF's own compiled decoding, what a user would pick instead
            try:
                runs[HF_STATIC], compile_s = hf_static_runs(model, batch, new_tokens, reps)
            except RuntimeError as err:
                print(f"ffnskip bench: no {HF_STATIC} row: {err}", file=sys.stderr)
            else:
                extras[HF_STATIC] = {"compile_s": compile_s}
                configs = [Config(HF_STATIC, None), *configs]
                counts[HF_STATIC], peaks[HF_STATIC] = Counts.of(None, new_tokens), None
    else:
        timed = _lockstep_runs if lockstep else _generate_runs
        runs, counts, peaks = timed(model, batch, configs, new_tokens, reps)
    rows = []
    for config in configs:
        prefill = [run[0] for run in runs[config.name]]
        decode = [sum(run[1:]) for run in runs[config.name]]
        steps = [t for run in runs[config.name] for t in run[1:]]
        seconds = statistics.median(decode)
        peak = peaks[config.name]
        rows.append(
            {
                "config": config.name,
                "path": config.name
                if config.name == HF_STATIC
                else "compiled"
                if compiled
                else "eager"
                if config.policy
                else "hf",
                "method": config.policy.method if config.policy else "hf",
                "batch_size": batch_size,
                "new_tokens": new_tokens,
                "prompt_tokens": prompt_tokens,
                "prefill_seconds": statistics.median(prefill),
                "prefill_tokens_per_s": prompt_tokens / statistics.median(prefill),
                "decode_seconds": seconds,
                "decode_seconds_spread": max(decode) - min(decode),
                "tokens_per_s": batch_size * (new_tokens - 1) / seconds,
                "latency_ms_p10": 1000 * _percentile(steps, 10),
                "latency_ms_p50": 1000 * _percentile(steps, 50),
                "latency_ms_p90": 1000 * _percentile(steps, 90),
                "latency_ms_p99": 1000 * _percentile(steps, 99),
                "peak_memory_mb": None if peak is None else peak / 2**20,
                "skip_ratio": counts[config.name].skip_ratio,
                "skip_ratio_pass": counts[config.name].skip_ratio_pass,
                "reads_per_step": counts[config.name].reads_per_step,
                "timing": ("streamer" if config.name == HF_STATIC else "compiled")
                if compiled
                else "lockstep"
                if lockstep
                else "generate",
                **extras.get(config.name, {}),
            }
        )
    return rows


# what a speedup compares: the median run's decode time, or a percentile of the pooled steps
SPEED_STATS = {"run": "decode_seconds", "p50": "latency_ms_p50", "p10": "latency_ms_p10"}


def add_ideal(rows: list[dict[str, object]], stat: str = "p50") -> None:
    """Add measured speedup vs the engine's dense run, the ideal speedup at that skip ratio, and
    (on the ``checks-only`` row) the time one similarity check and its host read add to a step.

    ``stat`` picks the time compared (``SPEED_STATS``): the per-step median by default, which
    a stall of the machine moves far less than a whole run; ``p10`` (the lower decile of steps)
    is the least disturbed by load, since noise only ever adds time.
    """
    if stat not in SPEED_STATS:
        raise ValueError(f"unknown speed statistic {stat!r}; choose one of {', '.join(SPEED_STATS)}")
    key = SPEED_STATS[stat]
    # each path against its own dense and skip-all (plain HF with the eager path); plain HF
    # (eager) is every path's vs_hf; hf-static has no dense of its own: vs_hf only
    for bs, path in {(r["batch_size"], _path_group(r)) for r in rows}:
        group = {r["config"]: r for r in rows if r["batch_size"] == bs and _path_group(r) == path}
        hf = next((r for r in rows if r["batch_size"] == bs and r["config"] == "hf"), None)
        if DENSE not in group or "skip-all" not in group:
            for row in group.values():
                row["speed_stat"] = stat
                if hf is not None:
                    row["vs_hf"] = hf[key] / row[key]
            continue
        t_dense = group[DENSE][key]
        t_ffn = t_dense - group["skip-all"][key]
        for row in group.values():
            row["speed_stat"] = stat
            row["speedup"] = t_dense / row[key]
            if hf is not None:
                row["vs_hf"] = hf[key] / row[key]
            if known_traits(row["method"])["skips_layers"]:  # whole layers: the FFN bound does not apply
                row["ideal_speedup"] = row["share_of_ideal"] = None
                continue
            row["ideal_speedup"] = t_dense / (t_dense - row["skip_ratio"] * t_ffn)
            row["share_of_ideal"] = (
                (row["speedup"] - 1) / (row["ideal_speedup"] - 1) if row["skip_ratio"] else None
            )
        checks, off = group.get("checks-only"), group.get("ffnskip-off")
        if checks and off and checks.get("reads_per_step"):
            # what one similarity check and its host read add to a step
            checks["ms_per_read"] = (_step_ms(checks, key) - _step_ms(off, key)) / checks["reads_per_step"]


def _path_group(row: dict[str, object]) -> str:
    """The rows a row's speedup is measured within: plain HF goes with the eager engine."""
    path = str(row.get("path", "eager"))
    return "eager" if path == "hf" else path


def _step_ms(row: dict[str, object], key: str) -> float:
    """The compared time of ``row`` (``SPEED_STATS[stat]``) as milliseconds per decoding step."""
    if key == "decode_seconds":
        return 1000 * row[key] / max(row["new_tokens"] - 1, 1)
    return row[key]


def environment(model: nn.Module) -> dict[str, object]:
    """What the figures were measured on."""
    device = model.device
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "dtype": str(model.dtype),
        "threads": torch.get_num_threads(),
        **versions(),
        "model": getattr(model.config, "_name_or_path", ""),
    }


# what ``run_bench`` accepts of its numbers and names (checked before any model is built)
OPTIONS = {
    "batch_sizes": Number(int, 1, many=True),
    "targets": Number(float, 0, 1, many=True),
    "methods": Methods(empty=True),
    "threshold": Number(float, -1),
    "new_tokens": Number(int, 2),  # the prefill, then at least one decoding step to time
    "reps": Number(int, 1),
}


def check_options(values: Mapping[str, Any], spell: Callable[[str], str] = str) -> None:
    """ValueError in one line for the first of ``run_bench``'s arguments ``values`` that is out of
    range (``spell``: how its user names an option), or a shape it cannot bench."""
    from ..harness.checkpoints import torch_dtype

    check_all(OPTIONS, values, spell)
    if values.get("stat", "p50") not in SPEED_STATS:
        stats = ", ".join(SPEED_STATS)
        raise ValueError(f"{spell('stat')}={values['stat']!r} is unknown; choose one of {stats}")
    torch_dtype(values.get("dtype", "float32"))
    check_shape(values.get("shape"), values.get("thin", False), values.get("methods", ()))


def check_shape(shape: str | None, thin: bool, methods: Sequence[str]) -> None:
    """A shape model, where asked for, is a shipped one and its methods do not need real weights."""
    from .shapes import SHAPES

    if thin and shape is None:
        raise ValueError("thin widths apply to a shape model: pass a shape (--shape) with --thin")
    if shape is None:
        return
    if shape not in SHAPES:
        raise ValueError(f"shape={shape!r} is unknown; shipped shapes: {', '.join(SHAPES)}")
    # a shape's configurations force ffnskip's trigger (threshold ALWAYS); a rule that still
    # decides from the weights' values would measure random weights
    if bad := [
        m for m in methods if rule_class(m).depends_on_weights(SkipPolicy(method=m, threshold=ALWAYS))
    ]:
        raise ValueError(
            f"methods {','.join(bad)} decide from the weights, which shape models have at random; "
            "use methods whose decisions do not (ffnskip, static, random, skipdecode)"
        )


def run_bench(
    pretrained: str = "smollm2-135m",
    shape: str | None = None,
    thin: bool = False,
    device: str = "cpu",
    dtype: str = "float32",
    batch_sizes: Sequence[int] = (1, 8),
    targets: Sequence[float] = (0.05, 0.25, 0.5),
    methods: Sequence[str] = ("ffnskip",),
    threshold: float = 0.9,
    new_tokens: int = 128,
    reps: int = 3,
    stat: str = "p50",
    lockstep: bool = False,
    compile: bool = False,
    overheads: bool = True,
    progress: bool = True,
    on_rows: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """``ffnskip bench``: decode speed of every configuration at every batch size, beside the
    ideal; ``shape`` instead of ``pretrained`` builds a shipped architecture with random weights
    (weight-independent methods only), ``thin`` its launch-bound variant (``shapes.thin``);
    ``compile`` adds the compiled path's rows (``bench_compiled``) after the eager ones;
    ``overheads=False`` leaves out ``ffnskip-off`` and ``checks-only``.
    Returns ``{"environment": ..., "rows": [...], "complete": True, "pending": []}``; ``on_rows``
    is given the same after each batch size and path, with ``complete`` False and the groups
    still to measure in ``pending`` until the last (so a run stopped midway keeps its rows)."""
    check_options(locals())  # the arguments, before anything loads
    from tqdm import tqdm

    from ..harness.calibrate import with_calibration
    from ..harness.checkpoints import load, torch_device, torch_dtype
    from .shapes import shape_model, token_batch

    targets, methods = tuple(float(t) for t in targets), tuple(methods)
    from ..skip.decode import check_config

    check = check_config if compile else None  # what the compiled path refuses, before loading
    if shape is not None:
        model = shape_model(shape, torch_dtype(dtype), torch_device(device), thin_widths=thin, check=check)
        configs = default_configs(targets, ALWAYS, methods, overheads)  # ffnskip fires at its first check

        def batch_of(size: int) -> dict:
            return token_batch(model.config.vocab_size, size, model.device)
    else:
        model, tokenizer = load(pretrained, device, dtype, check)
        configs = [
            dataclasses.replace(c, policy=c.policy and with_calibration(c.policy, model, tokenizer))
            for c in default_configs(targets, threshold, methods, overheads)
        ]

        def batch_of(size: int) -> dict:
            return prompt_batch(tokenizer, size, model.device)

    env = environment(model)
    if model.device.type == "cuda":  # decoding there is bound by streaming the weights
        from .roofline import copy_bandwidth, streamed_bytes

        env["copy_GB_per_s"], env["streamed_GB"] = (
            copy_bandwidth(model.device) / 1e9,
            streamed_bytes(model) / 1e9,
        )
        torch.cuda.empty_cache()  # the copy's buffers, before any run
    if shape is not None:
        env["weights"] = "random (shape only: the speed columns mean something, nothing else does)"
    if thin:
        env["widths"] = "thin (depth and operations of the shape, widths shrunk: the launch-bound regime)"
    paths = (False, True) if compile else (False,)
    groups = [(int(size), compiled) for size in batch_sizes for compiled in paths]
    rows: list[dict[str, Any]] = []
    payload: dict[str, Any] = {}
    for done, (size, compiled) in enumerate(tqdm(groups, desc="batches and paths", disable=not progress), 1):
        measured = decode_speed(
            model, batch_of(size), configs, new_tokens, reps, lockstep=lockstep, compiled=compiled
        )
        for row in measured if "copy_GB_per_s" in env else ():
            row["bound_tokens_per_s"] = row["batch_size"] * env["copy_GB_per_s"] / env["streamed_GB"]
            row["of_bound"] = row["tokens_per_s"] / row["bound_tokens_per_s"]
        rows += measured
        add_ideal(rows, stat)
        pending = [f"batch {b}, {'compiled' if c else 'eager'} path" for b, c in groups[done:]]
        payload = {"environment": env, "rows": rows, "complete": not pending, "pending": pending}
        if on_rows is not None:
            on_rows(payload)
    return payload
