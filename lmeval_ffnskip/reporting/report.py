"""``ffnskip report``: one self-contained HTML page of accuracy versus speed for a results directory.

``build(runs)`` gathers what the page shows (plain dicts and inline SVG strings); the jinja2
template ``templates/report.html.j2`` lays it out. Nothing is fetched when the page opens.
"""

from __future__ import annotations

import datetime
import itertools
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..skip.naming import DENSE, PAPER, config_name
from . import charts as svg
from .charts import Series
from .leaderboard import columns, constant_zero, leaderboard, table
from .results import AGREEMENT, Run, bench_row, by_model, dense_run, finite
from .summary import summary

TEMPLATES = Path(__file__).resolve().parent / "templates"
SAMPLE_DOCS = 3  # prompts shown side by side per generative task
X_SKIP = "FFN blocks skipped, % of eligible (whole layers in FFN-equivalents)"


def ffn_equivalent(run: Run) -> float:
    """The run's skip ratio in FFN blocks: a layer method's share of whole layers over the FFN's
    share of a layer's weights (the compute its target matches); runs that predate the recorded
    share stay at their share of layers."""
    share = run.ffnskip.get("ffn_share") if run.skips_layers else None
    return run.skip_ratio / share if share else run.skip_ratio


def skip_curves(runs: list[Run]) -> list[dict[str, str]]:
    """Per model and task: score against achieved skip ratio, one line per method (dense at 0)."""
    charts = []
    for model, group in by_model(runs).items():
        dense = dense_run(group)
        dropped = set(constant_zero(runs))
        tasks = sorted({t for r in group for t in r.scores} - dropped)
        for task in tasks:
            series = []
            for method, members in itertools.groupby(
                sorted((r for r in group if not r.is_reference), key=lambda r: r.method),
                key=lambda r: r.method,
            ):
                pts = [(100 * ffn_equivalent(r), r.scores[task].value) for r in members
                       if task in r.scores and finite(r.skip_ratio)]  # fmt: skip
                if dense and task in dense.scores:
                    pts.append((0.0, dense.scores[task].value))
                elif dense and task.endswith(AGREEMENT):
                    pts.append((0.0, 100.0))  # the dense model agrees with itself
                series.append((method, pts))
            metric = next(r.scores[task].metric for r in group if task in r.scores)
            title = f"{model}: {task} ({metric}) vs FFN skip ratio"
            if chart := svg.line_chart(title, series, X_SKIP, metric):
                charts.append({"title": title, "svg": chart})
    return charts


def pareto(runs: list[Run]) -> list[dict[str, str]]:
    """Per model and task: score against decode tokens/s, with the Pareto front drawn."""
    charts = []
    for model, group in by_model(runs).items():
        measured = [(r, bench_row(r)) for r in group]
        measured = [(r, b["tokens_per_s"]) for r, b in measured if b]
        for task in sorted({t for r, _ in measured for t in r.scores} - set(constant_zero(runs))):
            pts = [(speed, r.scores[task].value, r.method) for r, speed in measured if task in r.scores]
            higher = next(r.scores[task].higher_is_better for r, _ in measured if task in r.scores)
            front, best = [], None
            for speed, score, _ in sorted(pts, key=lambda p: -p[0]):
                if best is None or (score > best if higher else score < best):
                    front.append((speed, score))
                    best = score
            series = [
                (method, [(s, v) for s, v, m in pts if m == method]) for method in sorted({p[2] for p in pts})
            ]
            title = f"{model}: {task} vs decode speed"
            metric = next(r.scores[task].metric for r, _ in measured if task in r.scores)
            methods = [label for label, _ in series]
            chart = svg.line_chart(title, series, "decode tokens/s", metric, scatter=methods, front=front)
            charts.append({"title": title, "svg": chart})
    return charts


def _cold(layout: dict[str, Any], n_layers: int) -> list[tuple[float, float]]:
    """The cold regions as x-ranges on a per-layer axis."""
    start, end = layout.get("cold_start", 0), layout.get("cold_end", 0)
    return [(-0.5, start - 0.5), (n_layers - end - 0.5, n_layers - 0.5)]


def layer_charts(runs: list[Run]) -> list[dict[str, str]]:
    """Per model: the calibration similarity curve and each method's per-layer skip frequency."""
    charts = []
    for model, group in by_model(runs).items():
        calibration = group[0].extras.get("calibrate")
        if calibration:
            layers = calibration["layers"]
            shade = _cold(calibration["cold"], len(layers))
            title = f"{model}: cos(h, h + FFN) per layer (mean +- std), cold regions shaded"
            chart = svg.band_chart(title, [x["mean"] for x in layers], [x["std"] for x in layers],
                                   "layer", "cosine similarity", shade)  # fmt: skip
            charts.append({"title": title, "svg": chart})
        skipping = [r for r in group if r.stats.get("layer_skip_frequency")]
        for target in sorted({r.target for r in skipping if r.target is not None}):
            members = [r for r in skipping if r.target == target]
            series = [(r.cell, list(enumerate(r.stats["layer_skip_frequency"]))) for r in members]
            layout = next((r.ffnskip["layout"] for r in members if r.threshold_trigger), None)
            shade = _cold(layout, layout["n_layers"]) if layout else ()
            title = f"{model}: per-layer FFN skip frequency at target {target:g}"
            charts.append(
                {"title": title, "svg": svg.line_chart(title, series, "layer", "share skipped", shade)}
            )
    return charts


def flops_tables(runs: list[Run]) -> list[dict[str, Any]]:
    """Per model: flops.json's split (Table 4) with the saving per token, and a stacked-bar chart."""
    out = []
    for model, group in by_model(runs).items():
        flops = group[0].extras.get("flops")
        if not flops:
            continue
        dense = next(r for r in flops["rows"] if r["config"] == DENSE)["total"]
        rows = [{**r, "saving": 1 - r["total"] / dense} for r in flops["rows"]]
        parts = [(p, [r[p] / 1e6 for r in rows]) for p in ("attention", "ffn", "lm_head", "other")]
        title = f"{model}: decode FLOPs per token by part (context {rows[0]['context']})"
        chart = svg.bar_chart(title, [r["config"] for r in rows], parts, "MFLOPs (MACs)")
        out.append({"model": model, "convention": flops.get("convention", ""), "rows": rows, "svg": chart})
    return out


def fidelity_tables(runs: list[Run]) -> list[dict[str, Any]]:
    """Per model: ``fidelity.json``'s teacher-forced agreement with dense and perplexity per
    method and ratio, beside that configuration's batch-1 decode speed from ``bench.json``."""
    out = []
    for model, group in by_model(runs).items():
        fidelity = group[0].extras.get("fidelity")
        if not fidelity:
            continue
        rows = []
        for row in fidelity["rows"]:
            bench = bench_row(group[0], row["name"]) or {}
            rows.append({**row, "tokens_per_s": bench.get("tokens_per_s"), "speedup": bench.get("speedup")})
        out.append({"model": model, "source": fidelity["source"], "shape": fidelity["shape"], "rows": rows})
    return out


def warmup_charts(runs: list[Run]) -> list[dict[str, str]]:
    """Score against warm-up length (Figure 5), where runs differ in ``warmup`` only."""
    charts = []
    for model, group in by_model(runs).items():
        varied = [r for r in group if not r.is_reference and "warmup" in r.model_args]
        if len({int(r.model_args["warmup"]) for r in varied}) < 2:
            continue
        for task in sorted({t for r in varied for t in r.scores}):
            series: dict[str, list[tuple[float, float]]] = defaultdict(list)
            for r in varied:
                if task in r.scores:
                    series[config_name(r.method, r.target)].append(
                        (float(r.model_args["warmup"]), r.scores[task].value)
                    )
            title = f"{model}: {task} vs warm-up tokens"
            chart = svg.line_chart(title, sorted(series.items()), "warm-up (generated tokens)", "score")
            charts.append({"title": title, "svg": chart})
    return charts


def worst_case(runs: list[Run]) -> list[dict[str, Any]]:
    """Table 6: the share of eligible tokens whose similarity never reached the threshold."""
    return [
        {
            "model": r.model,
            "cell": r.cell,
            "threshold": r.ffnskip["policy"]["threshold"],
            "skip": r.skip_ratio,
            "never": r.stats["never_reached_threshold"],
        }
        for r in runs
        if r.threshold_trigger and r.stats.get("never_reached_threshold") is not None
    ]


def _prompt(sample: dict[str, Any]) -> str:
    args = sample.get("arguments", {})
    first = args.get("gen_args_0", {}).get("arg_0") if isinstance(args, dict) else args[0][0]
    return str(first or "")


def samples(runs: list[Run]) -> list[dict[str, Any]]:
    """Figure 1: a few prompts per generative task, the dense answer beside each skip method's
    answer at the model's highest target, with the agreement figures of that sample."""
    out = []
    for model, group in by_model(runs).items():
        dense = dense_run(group)
        if dense is None:
            continue
        top = max((r.target for r in group if r.target is not None), default=None)
        others = [r for r in group if r.target == top and not r.is_reference]
        for task in sorted(dense.agreement or {t for r in others for t in r.agreement}):
            ref = {s["doc_id"]: s for s in dense.samples(task)}
            answers = {r.cell: {s["doc_id"]: s["filtered_resps"][0] for s in r.samples(task)} for r in others}
            agree = {
                r.cell: {a["doc_id"]: a for a in r.agreement.get(task, {}).get("samples", [])} for r in others
            }
            for doc_id in sorted(ref)[:SAMPLE_DOCS]:
                prompt = _prompt(ref[doc_id])
                out.append(
                    {
                        "model": model,
                        "task": task,
                        "doc_id": doc_id,
                        "prompt": prompt if len(prompt) < 600 else f"... {prompt[-600:]}",
                        "answers": [("dense", ref[doc_id]["filtered_resps"][0], None)]
                        + [(cell, a.get(doc_id, ""), agree[cell].get(doc_id)) for cell, a in answers.items()],
                    }
                )
    return out


def speed_scaling(benches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per bench JSON x batch size (``ffnskip bench --json``, e.g. one per ``--shape``):
    the engine's overhead with skipping off, the cost of checks (all, and one where the JSON
    counted the reads), the ideal, and each skip configuration's speedup beside its ideal, in
    the order of the files given."""
    out = []
    for doc in benches:
        env = doc["environment"]
        for batch in sorted({r["batch_size"] for r in doc["rows"]}):
            # the eager path's rows (a ``--compile`` bench has more paths, each compared with its own)
            rows = {
                r["config"]: r
                for r in doc["rows"]
                if r["batch_size"] == batch and r.get("path", "eager") in ("hf", "eager")
            }
            fixed = {"hf", "dense", "ffnskip-off", "checks-only", "skip-all"}
            out.append(
                {
                    "model": env.get("model", "?").removeprefix("shape:"),
                    # a bench stopped midway (``complete`` False): what the whole run did not measure
                    "pending": doc.get("pending", []),
                    "random": "weights" in env,
                    "thin": "widths" in env,
                    "device": f"{env['device']}, {env['dtype'].replace('torch.', '')}",
                    "versions": f"torch {env.get('torch')}, transformers {env.get('transformers')}",
                    "batch": batch,
                    "dense_ms": rows.get("dense", {}).get("latency_ms_p50"),
                    "off_vs_hf": rows.get("ffnskip-off", {}).get("vs_hf"),
                    "checks": rows.get("checks-only", {}).get("speedup"),
                    "check_ms": rows.get("checks-only", {}).get("ms_per_read"),  # benches since 2026-11-30
                    "skip_all": rows.get("skip-all", {}).get("speedup"),
                    "configs": [r for name, r in rows.items() if name not in fixed],
                }
            )
    return out


def scaling_charts(scaling: list[dict[str, Any]], least: float = 0.2) -> list[dict[str, str]]:
    """Per device (thin shapes apart), batch 1: the paper's rule's share of the ideal gain against
    the share of FFNs skipped, one line per model (one colour per model in every chart), from
    ``least`` skipped on (below it the ideal gain is within a step's noise)."""
    groups: dict[str, list[Series]] = {}
    for s in scaling:
        points = [
            (100 * c["skip_ratio"], 100 * c["share_of_ideal"])
            for c in s["configs"]
            if c["method"] == PAPER and c.get("share_of_ideal") is not None and c["skip_ratio"] >= least
        ]
        if s["batch"] == 1 and points:
            device = s["device"].split(",")[0] + (", thin shapes" if s["thin"] else "")
            groups.setdefault(device, []).append((s["model"].removesuffix("-thin"), points))
    models = list(dict.fromkeys(label for series in groups.values() for label, _ in series))
    colours = {m: svg.EXTRA[i % len(svg.EXTRA)] for i, m in enumerate(models)}
    charts = []
    for device, series in groups.items():
        title = f"ffnskip's share of the ideal decode gain by model: {device}, batch 1"
        chart = svg.line_chart(
            title, series, "FFNs skipped (%)", "share of the ideal gain (%)", colours=colours, y_span=(0, 100)
        )
        charts.append({"title": title, "svg": chart})
    return charts


def build(runs: list[Run], source: str, benches: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Everything the template shows; ``benches``: bench JSONs for the speed-by-model section."""
    tasks = columns(runs)
    rows = leaderboard(runs, list(tasks))
    models = sorted({r.model for r in runs})
    scaling = speed_scaling(list(benches))
    return {
        "source": source,
        "summary": summary(rows, tasks),
        "tables": [table(m, [r for r in rows if r["model"] == m], tasks) for m in models],
        "constant_zero": constant_zero(runs),
        "scaling": scaling,
        "scaling_charts": scaling_charts(scaling),
        "generated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "models": models,
        "tasks": list(tasks),
        "rows": rows,
        "skip_curves": skip_curves(runs),
        "pareto": pareto(runs),
        "layers": layer_charts(runs),
        "flops": flops_tables(runs),
        "fidelity": fidelity_tables(runs),
        "warmup": warmup_charts(runs),
        "worst_case": worst_case(runs),
        "samples": samples(runs),
        # how bench.json timed its configurations (rows from before the field: one generate each)
        "bench_timing": sorted(
            {row.get("timing", "generate") for r in runs for row in r.extras.get("bench", {}).get("rows", [])}
        ),
    }


def render(context: dict[str, Any]) -> str:
    """The HTML page for ``build``'s context."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    env.filters["num"] = lambda v, fmt="{:.2f}": "" if v is None else fmt.format(v)
    return env.get_template("report.html.j2").render(**context)
