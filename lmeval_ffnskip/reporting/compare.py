"""One table that answers "what does skipping cost and buy on this model" from a results
directory: per configuration, the achieved skip ratio, agreement of generated answers with the
dense model's, teacher-forced top-1 agreement and perplexity, and decode speed beside its ideal."""

from __future__ import annotations

from typing import Any

from .results import Run, bench_row, fidelity_row


def comparison(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per run, in ``load_runs`` order, read from the run and the files beside it."""
    rows = []
    for run in runs:
        forced = fidelity_row(run) or {}
        speed = bench_row(run) or {}
        rows.append(
            {
                "model": run.model,
                "config": run.config,
                "skip_ratio": run.skip_ratio,
                "agreement": {t: a["rougeL"] for t, a in run.agreement.items()},
                "agreement_exact": {t: 100 * a["exact_match"] for t, a in run.agreement.items()},
                "top1": forced.get("top1_agreement"),
                "perplexity": forced.get("perplexity"),
                "speedup": speed.get("speedup"),
                "ideal_speedup": speed.get("ideal_speedup"),
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The comparison as aligned plain text, with a line saying what each column measures."""
    tasks = sorted({t for r in rows for t in r["agreement"]})

    def cell(value: float | None, fmt: str) -> str:
        return "-" if value is None else fmt.format(value)

    width = max([len(t) + 7 for t in tasks] + [14])
    head = f"{'model':<14}{'config':<14}{'skipped':>8}"
    head += "".join(f"{t + ' agree':>{width}}" for t in tasks)
    head += f"{'top-1=dense':>12}{'perplexity':>11}{'speedup':>9}{'ideal':>7}"
    lines = [head]
    for r in rows:
        line = f"{r['model']:<14}{r['config']:<14}{cell(r['skip_ratio'], '{:.1%}'):>8}"
        for t in tasks:
            rouge, exact = r["agreement"].get(t), r["agreement_exact"].get(t)
            both = "dense" if r["config"] == "dense" else f"{cell(rouge, '{:.1f}')} / {cell(exact, '{:.0f}')}"
            line += f"{both:>{width}}"
        line += f"{cell(r['top1'], '{:.3f}'):>12}{cell(r['perplexity'], '{:.2f}'):>11}"
        line += f"{cell(r['speedup'], '{:.3f}'):>9}{cell(r['ideal_speedup'], '{:.3f}'):>7}"
        lines.append(line)
    lines.append(
        "agree: ROUGE-L / exact match (%) of the answers against the dense model's (higher: closer); "
        "top-1=dense and perplexity: teacher-forced on the dense model's own continuations "
        "(higher / lower is closer); speedup: batch-1 decode step against dense, ideal: the bound at "
        "the achieved ratio"
    )
    return "\n".join(lines)
