"""The report's leaderboard: one row per run with its scores, deltas against its model's dense
run, teacher-forced fidelity, speed and FLOPs, and the task columns that separate methods."""

from __future__ import annotations

from typing import Any

from .results import Run, bench_row, by_model, dense_run, fidelity_row, flops_per_token


def constant_zero(runs: list[Run]) -> list[str]:
    """Tasks whose headline score is 0 in every run: they cannot separate methods, so they get no
    chart and no leaderboard column (the page says so)."""
    tasks = {t for r in runs for t in r.scores}
    return sorted(t for t in tasks if all(r.scores[t].value == 0 for r in runs if t in r.scores))


def columns(runs: list[Run]) -> dict[str, str]:
    """Leaderboard task columns, agreement with dense first: task -> "metric, higher/lower is better"."""
    dropped = set(constant_zero(runs))
    found = {t: s for r in runs for t, s in r.scores.items() if t not in dropped}
    order = sorted(found, key=lambda t: (not t.endswith("/agreement"), t))
    direction = {t: "higher" if found[t].higher_is_better else "lower" for t in order}
    return {t: f"{found[t].metric}, {direction[t]} is better" for t in order}


def leaderboard(runs: list[Run]) -> tuple[list[str], list[dict[str, Any]]]:
    """Task columns, and one row per run with scores, deltas vs its model's dense run, teacher-forced
    fidelity, speed and FLOPs."""
    tasks = list(columns(runs))
    rows = []
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
    return tasks, rows


def hardware(run: Run) -> str:
    env = run.extras.get("bench", {}).get("environment")
    if not env:
        return run.device or "?"
    return f"{env['device']} ({env['threads']} threads)"


def table(model: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's leaderboard; ``has`` says which optional columns any row fills."""
    has = {k: any(r[k] is not None for r in rows) for k in ("top1", "speedup", "mflops", "peak_mb")}
    return {"model": model, "rows": rows, "has": has}
