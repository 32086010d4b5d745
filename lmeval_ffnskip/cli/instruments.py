"""The instruments' subcommands: ``bench``, ``flops``, ``calibrate`` and ``fidelity``. Their flags
come from the instrument's options dataclass (``instruments/options.py``); each checks them before
anything loads (bad input: one line, exit 2), runs, prints a table and writes its JSON."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..taskdata.jsonfiles import write_json
from .flags import add_options, options_from


def _parse(
    prog: str, description: str, kind: type, argv: list[str], json_help: str
) -> tuple[Any, Path | None]:
    """The options of ``kind`` from ``argv``, and ``--json``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_options(parser, kind)
    parser.add_argument("--json", type=Path, help=json_help)
    args = parser.parse_args(argv)
    return args, args.json


def _checked(prog: str, make: Callable[[], Any]) -> Any:
    """``make()``, or None after one line on stderr where it raises ValueError (bad input)."""
    try:
        return make()
    except (FileNotFoundError, ValueError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return None


def _run(prog: str, args: argparse.Namespace, kind: type, run: Callable[..., Any], **extra: Any) -> Any:
    """The options from ``args``, checked as typed (flag names), then ``run`` on them; None after
    one line on stderr where the options or the run refuse them."""
    from ..inputs.options import flag

    def make() -> Any:
        options = options_from(args, kind)
        options.check(flag)  # named as typed, before anything loads
        return run(options, **extra)

    return _checked(prog, make)


def bench_main(argv: list[str]) -> int:
    """Parse ``ffnskip bench`` arguments, run the measurement, print a table, write JSON."""
    from ..instruments.bench import run_bench
    from ..instruments.options import BenchOptions

    args, out = _parse(
        "ffnskip bench",
        "Decode tokens/s of HF generate with and without FFN skipping, beside the ideal speedup "
        "t_dense / (t_dense - s * t_ffn).",
        BenchOptions,
        argv,
        "write the rows and environment here (after each batch size and path)",
    )
    # rewritten after each batch size and path: a run stopped midway keeps what it measured
    write = None if out is None else lambda payload: write_json(out, payload)
    payload = _run("ffnskip bench", args, BenchOptions, run_bench, on_rows=write)
    if payload is None:
        return 2
    env, rows = payload["environment"], payload["rows"]
    print(json.dumps(env))
    print(
        f"{'config':<14}{'path':>9}{'batch':>6}{'prefill/s':>10}{'tok/s':>9}"
        f"{'p10 ms':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'peak MB':>8}{'skip':>7}{'by all':>7}{'reads':>7}"
        f"{'vs hf':>7}{'speedup':>8}{'ideal':>7}{'of ideal':>9}{'of bound':>9}"
    )
    for r in rows:
        share = "" if r.get("share_of_ideal") is None else f"{r['share_of_ideal']:.0%}"
        ideal = "" if r.get("ideal_speedup") is None else f"{r['ideal_speedup']:.3f}"
        speedup = "" if r.get("speedup") is None else f"{r['speedup']:.3f}"
        peak = "" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        bound = f"{r['of_bound']:.0%}" if "of_bound" in r else ""
        print(
            f"{r['config']:<14}{r['path']:>9}{r['batch_size']:>6}{r['prefill_tokens_per_s']:>10.0f}{r['tokens_per_s']:>9.2f}"
            f"{r['latency_ms_p10']:>8.2f}{r['latency_ms_p50']:>8.2f}{r['latency_ms_p99']:>8.2f}{peak:>8}"
            f"{r['skip_ratio']:>7.1%}{r['skip_ratio_pass']:>7.1%}{r['reads_per_step']:>7.2f}"
            f"{r.get('vs_hf', 1.0):>7.3f}{speedup:>8}{ideal:>7}{share:>9}{bound:>9}"
        )
    for r in rows:
        if "ms_per_read" in r:
            print(f"batch {r['batch_size']}: one check and its host read add {r['ms_per_read']:.3f} ms/step")
    return 0


def flops_main(argv: list[str]) -> int:
    """Per-token decode FLOPs by part, dense and with skipping, beside the analytic count."""
    from ..instruments.flops import run_flops
    from ..instruments.options import FlopsOptions

    args, out = _parse(
        "ffnskip flops",
        "Per-token decode FLOPs (fvcore; one multiply-add = one flop; matrix products only) split into "
        "attention, FFN, LM head and other, for dense and for measured skip patterns.",
        FlopsOptions,
        argv,
        "write the rows here",
    )
    payload = _run("ffnskip flops", args, FlopsOptions, run_flops)
    if payload is None:
        return 2
    rows, analytic = payload["rows"], payload["analytic_dense_total"]
    dense_total = rows[0]["total"]
    print(f"{payload['model']}, context {args.context}: {payload['convention']}")
    if analytic is None:
        print(f"counted dense total {dense_total / 1e6:.2f} M (experts: the active ones per token)")
    else:
        print(f"analytic dense total {analytic / 1e6:.2f} M, fvcore {dense_total / 1e6:.2f} M "
              f"({dense_total / analytic - 1:+.3%})")  # fmt: skip
    print(f"{'config':<16}{'skip':>7}{'total M':>10}{'attn M':>9}{'FFN M':>9}{'head M':>9}{'saving':>8}")
    for r in rows:
        print(
            f"{r['config']:<16}{r['skip']:>7.1%}{r['total'] / 1e6:>10.2f}{r['attention'] / 1e6:>9.2f}"
            f"{r['ffn'] / 1e6:>9.2f}{r['lm_head'] / 1e6:>9.2f}{1 - r['total'] / dense_total:>8.1%}"
        )
    if out:
        write_json(out, payload)
    return 0


def calibrate_main(argv: list[str]) -> int:
    """Per-layer similarity curve, cold regions, and ffnskip settings for a target skip ratio."""
    from ..instruments.calibrate import run_calibrate
    from ..instruments.options import CalibrateOptions

    args, out = _parse(
        "ffnskip calibrate",
        "Measure cos(h, h + FFN) per layer over greedy continuations of WikiText-2 prompts, find the "
        "cold layers, and the threshold and k that reach --target (checked on held-out prompts). The "
        "JSON is a profile for --model_args profile=PATH.",
        CalibrateOptions,
        argv,
        "write the profile here",
    )
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    profile = _run("ffnskip calibrate", args, CalibrateOptions, run_calibrate, log=log)
    if profile is None:
        return 2
    print(f"{'layer':>5}{'mean cos':>10}{'std':>8}{'min':>8}")
    cold = profile["cold"]
    for i, layer in enumerate(profile["layers"]):
        mark = "  cold" if i < cold["cold_start"] or i >= profile["n_layers"] - cold["cold_end"] else ""
        print(f"{i:>5}{layer['mean']:>10.4f}{layer['std']:>8.4f}{layer['min']:>8.4f}{mark}")
    p = profile["policy"]
    print(
        f"target {args.target:.1%}: threshold {p['threshold']:g}, k {profile['k']}, cold {p['cold_start']}+"
        f"{p['cold_end']}; achieved {profile['calibration_ratio']:.1%} on calibration prompts, "
        f"{profile['heldout_ratio']:.1%} held out"
    )
    if out:
        write_json(out, profile)
    return 0


def fidelity_main(argv: list[str]) -> int:
    """Teacher-forced top-1 agreement with dense and perplexity, per method and skip ratio."""
    from ..instruments.fidelity import run_fidelity
    from ..instruments.options import FidelityOptions

    args, out = _parse(
        "ffnskip fidelity",
        "Teacher-forced fidelity to the dense model (no compounding): top-1 next-token agreement with "
        "dense and perplexity over WikiText-2 text or the dense model's own greedy continuations, for "
        "each method at each target skip ratio.",
        FidelityOptions,
        argv,
        "write the rows here",
    )
    payload = _run("ffnskip fidelity", args, FidelityOptions, run_fidelity)
    if payload is None:
        return 2
    rows, (n_seq, n_tok) = payload["rows"], payload["shape"]
    print(f"{args.pretrained}, {args.source}: {n_seq} x {n_tok} tokens, "
          f"first {args.warmup} positions full")  # fmt: skip
    print(f"{'config':<16}{'skipped':>9}{'top-1 = dense':>15}{'perplexity':>12}")
    for r in rows:
        print(f"{r['name']:<16}{r['skip_ratio']:>9.1%}{r['top1_agreement']:>15.3f}{r['perplexity']:>12.2f}")
    if out:
        write_json(out, payload)
    return 0
