"""The report's leaderboard: one row per run with its scores, deltas against its model's dense
run, teacher-forced fidelity, speed and FLOPs, and the task columns that separate methods."""

from __future__ import annotations

from typing import Any

from .grid import DOWN, UP, Column, Row, grid
from .results import AGREEMENT, Run, Score, bench_row, by_model, dense_run, fidelity_row, flops_per_token


def constant_zero(runs: list[Run]) -> list[str]:
    """Tasks whose headline score is 0 in every run: they cannot separate methods, so they get no
    chart and no leaderboard column (the page says so)."""
    tasks = {t for r in runs for t in r.scores}
    return sorted(t for t in tasks if all(r.scores[t].value == 0 for r in runs if t in r.scores))


def columns(runs: list[Run]) -> dict[str, Score]:
    """Leaderboard task columns, agreement with dense first: task -> its headline score's metric
    and direction (as the first run with the task has it)."""
    dropped = set(constant_zero(runs))
    found: dict[str, Score] = {}
    for run in runs:
        for task, score in run.scores.items():
            found.setdefault(task, score)
    order = sorted(set(found) - dropped, key=lambda t: (not t.endswith(AGREEMENT), t))
    return {t: found[t] for t in order}


def leaderboard(runs: list[Run], tasks: list[str]) -> list[Row]:
    """One row per run with its scores of ``tasks``, their deltas against its model's dense run,
    teacher-forced fidelity, speed and FLOPs."""
    rows: list[Row] = []
    for model, group in by_model(runs).items():
        dense = dense_run(group)
        for run in group:
            bench = bench_row(run) or {}
            cells = {}
            for task in tasks:
                score = run.scores.get(task)
                base = dense.scores.get(task) if dense else None
                delta = score.value - base.value if score and base and run is not dense else None
                worse = None if delta is None else (delta < 0) == score.higher_is_better and delta != 0
                cells[task] = {"value": score.value if score else None, "delta": delta, "worse": worse}
            flops = flops_per_token(run)
            forced = fidelity_row(run) or {}
            rows.append(
                {
                    "model": model,
                    "cell": run.cell,
                    "method": run.method,
                    "reference": run.is_reference,
                    "layers": run.skips_layers,
                    "target": run.target,
                    "skip": run.skip_ratio,
                    "scores": cells,
                    "top1": forced.get("top1_agreement"),
                    "perplexity": forced.get("perplexity"),
                    "tokens_per_s": bench.get("tokens_per_s"),
                    "speedup": bench.get("speedup"),
                    "ideal": bench.get("ideal_speedup"),
                    "mflops": None if flops is None else flops / 1e6,
                    "peak_mb": bench.get("peak_memory_mb"),
                    "device": hardware(run),
                    "dtype": (run.dtype or "").replace("torch.", ""),
                }
            )
    return rows


def hardware(run: Run) -> str:
    env = run.extras.get("bench", {}).get("environment")
    if not env:
        return run.device or "?"
    return f"{env['device']} ({env['threads']} threads)"


def _tone(row: Row, task: str) -> str:
    worse = row["scores"][task]["worse"]
    return "neg" if worse else "pos" if row["scores"][task]["delta"] else ""


def _no_bound(row: Row) -> tuple[str, str] | None:
    return ("n/a", "whole layers skipped: the bound is the FFN blocks' alone") if row["layers"] else None


def task_columns(task: str, score: Score) -> list[Column]:
    """A task's column (agreement with dense: its ROUGE-L), and for a task score its change
    against the dense run."""
    arrow, direction = (UP, "higher") if score.higher_is_better else (DOWN, "lower")
    agreement = task.endswith(AGREEMENT)
    value = Column(
        task.removesuffix(AGREEMENT),
        f"{score.metric}{arrow}",
        f"{task}: {score.metric}, {direction} is better",
        lambda r: r["scores"][task]["value"],
        "{:.2f}",
        missing="this run has no score for the task",
        on_reference=agreement,
    )
    if agreement:
        return [value]
    delta = Column(
        "\u0394",
        "vs dense",
        f"{task}: {score.metric} minus the dense run's (red: worse, green: better)",
        lambda r: r["scores"][task]["delta"],
        "{:+.2f}",
        missing="no score of this run or of the dense run for the task",
        on_reference=True,
        tone=lambda r: _tone(r, task),
    )
    return [value, delta]


METHOD = Column(
    "method", "", "the configuration: method-target[-setting value...]", lambda r: r["cell"], text=True
)
TARGET = Column(
    "target",
    "",
    "target_skip: the share of FFN blocks the rule aims to skip",
    lambda r: r["target"],
    "{:.0%}",
    on_reference=True,
)
SKIP = Column(
    "skipped",
    "achieved",
    "achieved share of FFN blocks (layer methods: whole layers) skipped over eligible tokens",
    lambda r: r["skip"],
    "{:.1%}",
)
FIDELITY = "not measured for this configuration: fidelity.json has no row for it"
TOP1 = Column(
    "top-1 = dense",
    f"teacher-forced{UP}",
    "share of positions whose top-1 next token is the dense model's, teacher-forced (ffnskip fidelity); "
    "higher is better",
    lambda r: r["top1"],
    "{:.3f}",
    missing=FIDELITY,
)
PERPLEXITY = Column(
    "perplexity",
    f"teacher-forced{DOWN}",
    "perplexity, teacher-forced (ffnskip fidelity); lower is better",
    lambda r: r["perplexity"],
    "{:.2f}",
    missing=FIDELITY,
)
BENCH = "not measured for this configuration: bench.json has no row for it"
SPEEDUP = Column(
    "speedup",
    f"batch 1{UP}",
    "decode step time of dense over this run's, batch 1 (ffnskip bench); higher is better",
    lambda r: r["speedup"],
    "{:.3f}",
    missing=BENCH,
)
IDEAL = Column(
    "ideal",
    "at this skip",
    "t_dense / (t_dense - s \u00b7 t_ffn): the speedup if skipping cost nothing",
    lambda r: r["ideal"],
    "{:.3f}",
    missing=BENCH,
    blank=_no_bound,
)
TOKENS = Column(
    "tok/s",
    "decode",
    "decode tokens per second, batch 1",
    lambda r: r["tokens_per_s"],
    "{:.1f}",
    missing=BENCH,
)
MFLOPS = Column(
    "MFLOPs",
    f"per token{DOWN}",
    "decode FLOPs per token: flops.json's dense split less what this run skipped",
    lambda r: r["mflops"],
    "{:.1f}",
    missing="no FLOPs count for this configuration (ffnskip flops)",
)
PEAK = Column(
    "peak MB",
    "memory",
    "peak memory while decoding, MB (ffnskip bench)",
    lambda r: r["peak_mb"],
    "{:.0f}",
    missing=BENCH,
)


def table(model: str, rows: list[Row], tasks: dict[str, Score]) -> dict[str, Any]:
    """One model's leaderboard as the page shows it, with where it was measured."""
    by_task = [c for task, score in tasks.items() for c in task_columns(task, score)]
    columns = [METHOD, TARGET, SKIP, *by_task, TOP1, PERPLEXITY, SPEEDUP, IDEAL, TOKENS, MFLOPS, PEAK]
    where = [*dict.fromkeys(r["device"] for r in rows), *dict.fromkeys(r["dtype"] for r in rows)]
    return {"model": model, **grid(columns, rows), "measured": ", ".join(where)}
