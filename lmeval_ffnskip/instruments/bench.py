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

import dataclasses
import platform
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..skip.policy import ALWAYS
from ..skip.provenance import versions
from .bench_configs import HF_STATIC, Config, default_configs, prompt_batch
from .bench_eager import generate_runs, lockstep_runs
from .ideal import add_ideal
from .options import BenchOptions
from .timing import Counts


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _path(config: Config, compiled: bool) -> str:
    """The decoding path of a row: HF's own static-cache compiled generate, ours compiled or
    eager, or plain HF."""
    if config.name == HF_STATIC:
        return HF_STATIC
    if compiled:
        return "compiled"
    return "eager" if config.policy else "hf"


def _timing(config: Config, compiled: bool, lockstep: bool) -> str:
    """How a row's passes were timed."""
    if compiled:
        return "streamer" if config.name == HF_STATIC else "compiled"
    return "lockstep" if lockstep else "generate"


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
    configurations in turns pass by pass (``bench_eager.lockstep_runs``), which pairs their steps in time: on
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
        timed = lockstep_runs if lockstep else generate_runs
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
                "path": _path(config, compiled),
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
                "timing": _timing(config, compiled, lockstep),
                **extras.get(config.name, {}),
            }
        )
    return rows


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


def run_bench(
    options: BenchOptions,
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
    options.check()  # before anything loads
    from tqdm import tqdm

    from ..inputs.checkpoints import load, torch_device, torch_dtype
    from ..skip.decode import check_config
    from .calibrate import with_calibration
    from .shapes import shape_model, token_batch

    targets, methods = tuple(float(t) for t in options.targets), tuple(options.methods)
    check = check_config if options.compile else None  # what the compiled path refuses, before loading
    if options.shape is not None:
        model = shape_model(
            options.shape,
            torch_dtype(options.dtype),
            torch_device(options.device),
            thin_widths=options.thin,
            check=check,
        )
        configs = default_configs(
            targets, ALWAYS, methods, options.overheads
        )  # ffnskip fires at its first check

        def batch_of(size: int) -> dict:
            return token_batch(model.config.vocab_size, size, model.device)
    else:
        model, tokenizer = load(options.pretrained, options.device, options.dtype, check)
        configs = [
            dataclasses.replace(c, policy=c.policy and with_calibration(c.policy, model, tokenizer))
            for c in default_configs(targets, options.threshold, methods, options.overheads)
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
    if options.shape is not None:
        env["weights"] = "random (shape only: the speed columns mean something, nothing else does)"
    if options.thin:
        env["widths"] = "thin (depth and operations of the shape, widths shrunk: the launch-bound regime)"
    paths = (False, True) if options.compile else (False,)
    groups = [(int(size), compiled) for size in options.batch_sizes for compiled in paths]
    rows: list[dict[str, Any]] = []
    payload: dict[str, Any] = {}
    for done, (size, compiled) in enumerate(tqdm(groups, desc="batches and paths", disable=not progress), 1):
        measured = decode_speed(
            model,
            batch_of(size),
            configs,
            options.new_tokens,
            options.reps,
            lockstep=options.lockstep,
            compiled=compiled,
        )
        for row in measured if "copy_GB_per_s" in env else ():
            row["bound_tokens_per_s"] = row["batch_size"] * env["copy_GB_per_s"] / env["streamed_GB"]
            row["of_bound"] = row["tokens_per_s"] / row["bound_tokens_per_s"]
        rows += measured
        add_ideal(rows, options.stat)
        pending = [f"batch {b}, {'compiled' if c else 'eager'} path" for b, c in groups[done:]]
        payload = {"environment": env, "rows": rows, "complete": not pending, "pending": pending}
        if on_rows is not None:
            on_rows(payload)
    return payload
