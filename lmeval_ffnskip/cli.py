"""The ``ffnskip`` command (also ``python -m lmeval_ffnskip``).

Subcommands: ``bench`` (decode speed), ``judge`` (grade logged chat answers with an LLM judge),
``flops`` (per-token decode FLOPs), ``calibrate`` (similarity curve and a profile for a target
ratio), ``fidelity`` (teacher-forced agreement with dense), ``sweep`` (tasks x methods x ratios
into one results directory), ``report`` (HTML page of a results directory), ``baseline`` /
``check`` (the CI regression gate). Any other arguments go to lm-eval's own CLI with
``--model ffnskip`` registered, so ``python -m lmeval_ffnskip --model ffnskip --tasks ...`` is
``lm_eval --model ffnskip --tasks ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .instruments.shapes import SHAPES
from .skip.provenance import source_commit


def bench_main(argv: list[str]) -> int:
    """Parse ``ffnskip bench`` arguments, run the measurement, print a table, write JSON."""
    parser = argparse.ArgumentParser(
        prog="ffnskip bench",
        description="Decode tokens/s of HF generate with and without FFN skipping, beside the "
        "ideal speedup t_dense / (t_dense - s * t_ffn).",
    )
    parser.add_argument("--pretrained", default="smollm2-135m", help="embedded alias, HF id or local dir")
    parser.add_argument(
        "--shape",
        help="instead of --pretrained: a shipped architecture with random weights (speed only; "
        "ffnskip's trigger forced at its first check; methods: ffnskip, static, random, skipdecode), one of "
        + ", ".join(SHAPES),
    )
    parser.add_argument(
        "--thin",
        action="store_true",
        help="with --shape: keep its depth and operations, shrink every width, so each operation costs "
        "about its dispatch (a launch-bound GPU's regime, on any device)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated (default 1,8)")
    parser.add_argument("--targets", default="0.05,0.25,0.5", help="ffnskip target_skip values")
    parser.add_argument("--methods", default="ffnskip", help="methods run at each target (default ffnskip)")
    parser.add_argument("--threshold", type=float, default=0.9, help="ffnskip threshold (default 0.9)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--stat",
        choices=("p50", "p10", "run"),
        default="p50",
        help="time that speedups compare: per-step median (default), per-step lower decile (least "
        "disturbed by a loaded machine), or the median run's decode time",
    )
    parser.add_argument(
        "--lockstep",
        action="store_true",
        help="decode all configurations in turns, pass by pass, instead of one generate each: times "
        "the forward passes alone, paired in time (steadier on a machine whose speed drifts)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="add the compiled path's rows (static KV cache, one compiled step per token, skipping "
        "decided inside it; methods with a device form), each row with its path",
    )
    parser.add_argument(
        "--no-overheads",
        action="store_true",
        help="leave out ffnskip-off and checks-only (the rows that measure the engine's own costs), "
        "e.g. to fit a time limit",
    )
    parser.add_argument(
        "--json", type=Path, help="write the rows and environment here (after each batch size and path)"
    )
    args = parser.parse_args(argv)

    from .harness.options import flag, numbers
    from .instruments.bench import OPTIONS, check_options, run_bench
    from .taskdata.data import write_json

    try:
        options = {
            "pretrained": args.pretrained,
            "shape": args.shape,
            "thin": args.thin,
            "device": args.device,
            "dtype": args.dtype,
            "batch_sizes": numbers("--batch-sizes", args.batch_sizes, OPTIONS["batch_sizes"]),
            "targets": numbers("--targets", args.targets, OPTIONS["targets"]),
            "methods": args.methods.split(","),
            "threshold": args.threshold,
            "new_tokens": args.new_tokens,
            "reps": args.reps,
            "stat": args.stat,
            "lockstep": args.lockstep,
            "compile": args.compile,
            "overheads": not args.no_overheads,
        }
        check_options(options, flag)  # named as typed, before anything loads
        # rewritten after each batch size and path: a run stopped midway keeps what it measured
        write = None if args.json is None else lambda payload: write_json(args.json, payload)
        payload = run_bench(**options, on_rows=write)
    except ValueError as err:
        print(f"ffnskip bench: {err}", file=sys.stderr)
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


def _samples_files(paths: list[Path]) -> list[Path]:
    """The given files, and the mt_bench / vicuna80 samples files under the given folders."""
    files = []
    for p in paths:
        if p.is_dir():
            files += sorted(
                f for task in ("mt_bench", "vicuna80") for f in p.rglob(f"samples_{task}_*.jsonl")
            )
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"no samples_mt_bench_*.jsonl or samples_vicuna80_*.jsonl under {paths}")
    return files


def judge_main(argv: list[str]) -> int:
    """Grade logged mt_bench / vicuna80 samples with an LLM judge; exit 1 if some requests failed."""
    import os

    from .taskdata import judge
    from .taskdata.data import cache_root, read_jsonl

    parser = argparse.ArgumentParser(
        prog="ffnskip judge",
        description="Grade lm-eval --log_samples output of mt_bench (single-answer, 1-10) and vicuna80 "
        "(pairwise vs GPT-3.5) with a judge model behind an OpenAI-compatible endpoint.",
    )
    parser.add_argument(
        "samples", nargs="+", type=Path, help="samples_*.jsonl files or lm-eval output folders"
    )
    parser.add_argument(
        "--base-url",
        default="https://api.openai.com/v1",
        help="endpoint root (…/v1); user:password@ in it is sent as basic auth when there is no API key",
    )
    parser.add_argument(
        "--judge-model", default="gpt-4", help="judge model name (default gpt-4, as MT-Bench)"
    )
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the API key")
    parser.add_argument("--workers", type=int, default=4, help="parallel requests (default 4)")
    parser.add_argument("--retries", type=int, default=5, help="retries per request, exponential back-off")
    parser.add_argument("--cache", type=Path, default=cache_root() / "judge_cache.jsonl")
    parser.add_argument("--json", type=Path, help="write every judgment and the summaries here")
    args = parser.parse_args(argv)
    key = os.environ.get(args.api_key_env) or None
    try:
        endpoint = judge.Endpoint(args.base_url, args.judge_model, key, retries=args.retries)
    except ValueError as err:
        parser.error(f"--base-url: {err}")  # not the URL itself: it may hold credentials
    client = judge.Judge(endpoint, args.cache)
    results = {}
    try:
        if endpoint.needs_key:
            raise judge.JudgeError(
                f"{endpoint.url} needs an API key and {args.api_key_env} is unset or empty: set it (or "
                "name another variable with --api-key-env), or pass --base-url of a local endpoint "
                "that needs no key"
            )
        for path in _samples_files(args.samples):
            samples = read_jsonl(path)
            task = judge.task_of(samples, path)
            records = judge.run(client, judge.queries(task, samples), args.workers)
            results[str(path)] = {
                "task": task,
                "summary": judge.summarize(task, records),
                "judgments": records,
            }
    except (ValueError, KeyError, FileNotFoundError, judge.JudgeError) as err:
        print(f"ffnskip judge: {endpoint.redact(str(err))}", file=sys.stderr)
        return 2
    finally:
        if args.json and results:
            payload = {"judge": {"base_url": endpoint.url, "model": args.judge_model}, "results": results}
            args.json.write_text(json.dumps(payload, indent=2))
    print(
        f"{'task':<10}{'score':>7}{'gpt-3.5':>8}{'win/tie/loss':>13}{'ok':>5}{'unparsed':>9}{'error':>6}"
        "  file"
    )
    for path, r in results.items():
        s = r["summary"]
        score = "" if s["score"] is None else f"{s['score']:.2f}"
        other = "" if s.get("gpt35_score") is None else f"{s['gpt35_score']:.2f}"
        wtl = f"{s['win']}/{s['tie']}/{s['loss']}" if "win" in s else ""
        print(
            f"{r['task']:<10}{score:>7}{other:>8}{wtl:>13}{s['ok']:>5}{s['unparseable']:>9}{s['error']:>6}  "
            f"{path}"
        )
    print(f"{client.calls} requests to {endpoint.url}; cache {args.cache}")
    return 1 if any(r["summary"]["error"] for r in results.values()) else 0


def flops_main(argv: list[str]) -> int:
    """Per-token decode FLOPs by part, dense and with skipping, beside the analytic count."""
    parser = argparse.ArgumentParser(
        prog="ffnskip flops",
        description="Per-token decode FLOPs (fvcore; one multiply-add = one flop; matrix products only) "
        "split into attention, FFN, LM head and other, for dense and for measured skip patterns.",
    )
    parser.add_argument("--pretrained", default="smollm2-135m", help="embedded alias, HF id or local dir")
    parser.add_argument(
        "--shape",
        help="instead of --pretrained: a shipped architecture with random weights (ffnskip's trigger "
        "forced at its first check), one of " + ", ".join(SHAPES),
    )
    parser.add_argument("--thin", action="store_true", help="with --shape: its thin widths (as bench)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--context", type=int, default=512, help="positions the new token attends to")
    parser.add_argument("--targets", default="0.25,0.5", help="target_skip values to measure ('' for none)")
    parser.add_argument("--methods", default="ffnskip", help="methods run at each target (default ffnskip)")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens generated per pattern")
    parser.add_argument(
        "--results", nargs="*", type=Path, default=[], help="lm-eval results JSON of ffnskip runs"
    )
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)

    from .harness.options import flag, numbers
    from .instruments.flops import OPTIONS, check_options, run_flops

    try:
        options = {
            "pretrained": args.pretrained,
            "shape": args.shape,
            "thin": args.thin,
            "device": args.device,
            "context": args.context,
            "targets": numbers("--targets", args.targets, OPTIONS["targets"]),
            "methods": args.methods.split(","),
            "threshold": args.threshold,
            "new_tokens": args.new_tokens,
            "results": args.results,
        }
        check_options(options, flag)  # named as typed, before anything loads
        payload = run_flops(**options)
    except ValueError as err:
        print(f"ffnskip flops: {err}", file=sys.stderr)
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
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


def calibrate_main(argv: list[str]) -> int:
    """Per-layer similarity curve, cold regions, and ffnskip settings for a target skip ratio."""
    from .harness.calibrate import Settings, check_options, run_calibrate
    from .harness.options import flag

    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="ffnskip calibrate",
        description="Measure cos(h, h + FFN) per layer over greedy continuations of WikiText-2 prompts, "
        "find the cold layers, and the threshold and k that reach --target (checked on held-out "
        "prompts). The JSON is a profile for --model_args profile=PATH.",
    )
    parser.add_argument("--pretrained", default="smollm2-135m", help="embedded alias, HF id or local dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--target", type=float, default=0.25, help="target skip ratio (default 0.25)")
    parser.add_argument(
        "--prompts", type=int, default=defaults.prompts, help="calibration (and held-out) prompts"
    )
    parser.add_argument("--prompt-tokens", type=int, default=defaults.prompt_tokens)
    parser.add_argument("--new-tokens", type=int, default=defaults.new_tokens)
    parser.add_argument("--tolerance", type=float, default=defaults.tolerance)
    parser.add_argument("--json", type=Path, help="write the profile here")
    args = parser.parse_args(argv)
    options = {
        "pretrained": args.pretrained,
        "device": args.device,
        "target": args.target,
        "prompts": args.prompts,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "tolerance": args.tolerance,
    }
    try:
        check_options(options, flag)  # named as typed, before anything loads
        profile = run_calibrate(**options, log=lambda line: print(line, file=sys.stderr))
    except (FileNotFoundError, ValueError) as err:
        print(f"ffnskip calibrate: {err}", file=sys.stderr)
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
    if args.json:
        args.json.write_text(json.dumps(profile, indent=2))
    return 0


def fidelity_main(argv: list[str]) -> int:
    """Teacher-forced top-1 agreement with dense and perplexity, per method and skip ratio."""
    parser = argparse.ArgumentParser(
        prog="ffnskip fidelity",
        description="Teacher-forced fidelity to the dense model (no compounding): top-1 next-token "
        "agreement with dense and perplexity over WikiText-2 text or the dense model's own greedy "
        "continuations, for each method at each target skip ratio.",
    )
    parser.add_argument("--pretrained", default="smollm2-135m", help="embedded alias, HF id or local dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default="ffnskip,static,random")
    parser.add_argument("--targets", default="0.1,0.25,0.4")
    parser.add_argument("--threshold", type=float, default=0.9, help="ffnskip threshold (default 0.9)")
    parser.add_argument("--cold-start", type=int, help="cold layers at the start, every method")
    parser.add_argument("--cold-end", type=int, help="cold layers at the end, every method")
    parser.add_argument("--source", choices=("wikitext", "continuations"), default="wikitext")
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--length", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--warmup", type=int, default=32, help="leading positions run full, not scored")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)

    from .harness.options import flag, numbers
    from .instruments.fidelity import OPTIONS, check_options, run_fidelity

    try:
        options = {
            "pretrained": args.pretrained,
            "device": args.device,
            "methods": args.methods.split(","),
            "targets": numbers("--targets", args.targets, OPTIONS["targets"]),
            "threshold": args.threshold,
            "cold_start": args.cold_start,
            "cold_end": args.cold_end,
            "source": args.source,
            "sequences": args.sequences,
            "length": args.length,
            "warmup": args.warmup,
        }
        check_options(options, flag)  # named as typed, before anything loads
        payload = run_fidelity(**options)
    except (FileNotFoundError, ValueError) as err:
        print(f"ffnskip fidelity: {err}", file=sys.stderr)
        return 2
    rows, (n_seq, n_tok) = payload["rows"], payload["shape"]
    print(f"{args.pretrained}, {args.source}: {n_seq} x {n_tok} tokens, "
          f"first {args.warmup} positions full")  # fmt: skip
    print(f"{'config':<16}{'skipped':>9}{'top-1 = dense':>15}{'perplexity':>12}")
    for r in rows:
        print(f"{r['name']:<16}{r['skip_ratio']:>9.1%}{r['top1_agreement']:>15.3f}{r['perplexity']:>12.2f}")
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


def sweep_main(argv: list[str]) -> int:
    """Run a sweep config into a results directory (resumable), and print its table."""
    from .instruments.sweep import SHIPPED, SweepConfig, run

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
    from .instruments.sweep import SweepConfig, run
    from .reporting.compare import comparison, table
    from .reporting.report import build, render
    from .reporting.results import load_runs

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
    from .reporting.report import build, render
    from .reporting.results import ResultsError, load_runs, read_bench

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
    from .reporting.gate import Limits, baseline
    from .reporting.results import ResultsError, load_runs

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
    from .reporting.gate import compare, limits_from, markdown, read_baseline, table, version_notes
    from .reporting.results import ResultsError, load_runs

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


SUBCOMMANDS = {
    "compare": compare_main,
    "bench": bench_main,
    "judge": judge_main,
    "flops": flops_main,
    "sweep": sweep_main,
    "calibrate": calibrate_main,
    "fidelity": fidelity_main,
    "report": report_main,
    "baseline": baseline_main,
    "check": check_main,
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand, or to lm-eval's CLI."""
    argv = sys.argv[1:] if argv is None else argv
    source_commit()  # read now: a long run records the source it started from, not a later edit
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    from lm_eval.__main__ import cli_evaluate

    from . import _register  # noqa: F401  (registers --model ffnskip)

    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
    return 0
