"""The subcommands that make or read a results directory: ``sweep``, ``compare`` (the main job),
``report``, and the regression gate's ``baseline`` and ``check``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def sweep_main(argv: list[str]) -> int:
    """Run a sweep config into a results directory (resumable), and print its table."""
    from ..sweep.config import SHIPPED, SweepConfig
    from ..sweep.run import run

    shipped = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.yaml")))
    parser = argparse.ArgumentParser(
        prog="ffnskip sweep",
        description="lm-eval tasks x methods x skip ratios (x any model_arg grid), plus FLOPs and bench, "
        "into one results directory; finished results made with the same settings are reused.",
    )
    parser.add_argument("config", type=Path, help=f"a sweep YAML, or a shipped one: {shipped}")
    parser.add_argument("--out", type=Path, required=True, help="results directory")
    args = parser.parse_args(argv)
    try:
        cfg = SweepConfig.load(args.config)
    except (OSError, ValueError, TypeError) as err:
        print(f"ffnskip sweep: {err}", file=sys.stderr)
        return 2
    try:
        rows = run(cfg, args.out, log=lambda line: print(f"ffnskip sweep: {line}", file=sys.stderr))
    except ValueError as err:  # the config, checked whole before any cell runs
        print(f"ffnskip sweep: {args.config}: {err}", file=sys.stderr)
        return 2
    keys = [k for k in rows[0] if k not in ("model", "cell", "method", "target_skip")] if rows else []
    print("\t".join(["model", "cell", *keys]))
    for r in rows:
        print("\t".join([r["model"], r["cell"], *(_cell(r.get(k)) for k in keys)]))
    print(f"results in {args.out}; summary {args.out / 'summary.json'}")
    return 0


def compare_main(argv: list[str]) -> int:
    """The main job: a shipped sweep comparing methods, its table in the terminal and its report."""
    from ..reporting.compare import comparison, table
    from ..reporting.report import build, render
    from ..reporting.results import load_runs
    from ..sweep.config import SweepConfig
    from ..sweep.run import run

    parser = argparse.ArgumentParser(
        prog="ffnskip compare",
        description="Dense against the paper's rule, ours and a baseline at 25% on the embedded "
        "SmolLM2-135M (the shipped sweep `compare`, or --config): the achieved skip ratio, agreement "
        "with the dense model, teacher-forced top-1 / perplexity and decode speed beside its ideal, "
        "printed and written as an HTML report. Finished cells made with the same settings are reused.",
    )
    parser.add_argument("--out", type=Path, default=Path("out/compare"), help="results directory")
    parser.add_argument("--config", type=Path, default=Path("compare"), help="a sweep YAML or shipped name")
    args = parser.parse_args(argv)
    try:
        cfg = SweepConfig.load(args.config)
        run(
            cfg, args.out, progress=False, log=lambda line: print(f"ffnskip compare: {line}", file=sys.stderr)
        )
    except (OSError, ValueError, TypeError) as err:
        print(f"ffnskip compare: {args.config}: {err}", file=sys.stderr)
        return 2
    runs = load_runs(args.out)
    print(table(comparison(runs)))
    report = args.out / "report.html"
    report.write_text(render(build(runs, args.config.name)))
    print(f"report: {report}")
    return 0


def report_main(argv: list[str]) -> int:
    """Render a results directory as one self-contained HTML page."""
    from ..reporting.report import build, render
    from ..reporting.results import ResultsError, load_runs, read_bench

    parser = argparse.ArgumentParser(
        prog="ffnskip report",
        description="Leaderboard, score-vs-skip and Pareto charts, per-layer curves, FLOPs, worst-case "
        "table and sample generations of an `ffnskip sweep` directory or lm-eval output folders, as "
        "one HTML file that opens offline.",
    )
    parser.add_argument("results", type=Path, help="results directory (or one results JSON)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="HTML file to write")
    parser.add_argument(
        "--bench", nargs="*", type=Path, default=[], help="ffnskip bench JSONs for a speed-by-model section"
    )
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.results)
        benches = [read_bench(p) for p in args.bench]
        html = render(build(runs, args.results.resolve().name, benches))  # no machine path in the page
    except ResultsError as err:
        print(f"ffnskip report: {err}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(html)
    print(f"{len(runs)} runs of {len({r.model for r in runs})} model(s) -> {args.output}")
    return 0


def _tolerances(values: list[str]) -> tuple[float | None, dict[str, float]]:
    """``["1.5", "freebaseqa=2"]`` -> (default 1.5, {"freebaseqa": 2.0})."""
    default, per_task = None, {}
    for value in values:
        task, _, number = value.rpartition("=")
        if task:
            per_task[task] = float(number)
        else:
            default = float(number)
    return default, per_task


def _gate_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("results", type=Path, help="results directory (ffnskip sweep or lm-eval output)")
    parser.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="[TASK=]POINTS",
        help="points a score may drop (default 1.0); TASK=POINTS for one task; repeatable",
    )
    parser.add_argument("--skip-band", type=float, help="allowed |achieved - baseline| skip ratio (0.02)")
    parser.add_argument("--speedup-floor", type=float, help="lowest decode speedup over dense (0.95)")
    return parser


def baseline_main(argv: list[str]) -> int:
    """Write a baseline for ``ffnskip check`` from a results directory."""
    from ..reporting.gate import Limits, baseline
    from ..reporting.results import ResultsError, load_runs

    parser = _gate_parser("ffnskip baseline", "Record a results directory's scores as a regression baseline.")
    parser.add_argument("-o", "--output", type=Path, required=True, help="baseline JSON to write")
    args = parser.parse_args(argv)
    default, per_task = _tolerances(args.tolerance)
    given = {"tolerance": default, "skip_band": args.skip_band, "speedup_floor": args.speedup_floor}
    limits = Limits(**{k: v for k, v in given.items() if v is not None}, per_task=per_task or None)
    try:
        doc = baseline(load_runs(args.results), limits, str(args.results))
    except (ResultsError, ValueError) as err:
        print(f"ffnskip baseline: {err}", file=sys.stderr)
        return 2
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"baseline of {len(doc['runs'])} runs -> {args.output}")
    return 0


def check_main(argv: list[str]) -> int:
    """The regression gate: 0 pass, 1 regression, 2 bad input."""
    from ..reporting.gate import compare, limits_from, markdown, read_baseline, table, version_notes
    from ..reporting.results import ResultsError, load_runs

    parser = _gate_parser(
        "ffnskip check",
        "Compare results with a baseline: scores may drop at most the tolerance, the achieved skip "
        "ratio must stay in its band, the speedup above its floor. Exit 0 pass, 1 regression, 2 bad input.",
    )
    parser.add_argument("--baseline", type=Path, required=True, help="from `ffnskip baseline`")
    parser.add_argument("--markdown", type=Path, help="also write a Markdown summary here (CI job page)")
    args = parser.parse_args(argv)
    default, per_task = _tolerances(args.tolerance)
    try:
        doc = read_baseline(args.baseline)
        limits = limits_from(
            doc,
            {
                "tolerance": default,
                "per_task": per_task,
                "skip_band": args.skip_band,
                "speedup_floor": args.speedup_floor,
            },
        )
        runs = load_runs(args.results)
        checks = compare(runs, doc, limits)
    except (ResultsError, ValueError, KeyError, TypeError) as err:
        print(f"ffnskip check: {err}", file=sys.stderr)
        return 2
    print(table(checks))
    for note in version_notes(runs, doc):
        print(note)
    if args.markdown:
        args.markdown.write_text(markdown(checks) + "".join(f"\n{n}\n" for n in version_notes(runs, doc)))
    return 0 if all(c.ok for c in checks) else 1


def _cell(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)
