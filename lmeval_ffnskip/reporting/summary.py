"""The report's answer first: per model and target ratio, the configuration that keeps the most of
the dense model, its achieved ratio and speedup beside the ideal, and the paper's rule beside it.

"Keeps the most" is the mean win rate (as HELM ranks models) over the measures the leaderboard
leads with: each task's agreement with the dense answers, teacher-forced top-1 agreement and
perplexity. On one measure a configuration's win rate is the share of the others at its target
that it beats (a tie counts half); its mean is over the measures it has. Equal rates go to the
higher mean agreement.
"""

from __future__ import annotations

import math
from typing import Any

from ..skip.naming import PAPER
from .grid import UP, Column, Row, grid
from .leaderboard import IDEAL, METHOD, PERPLEXITY, SKIP, SPEEDUP, TARGET, TOP1
from .results import AGREEMENT, Score

BEST, PAPERS = "keeps the most", "the paper's rule"

ROLE = Column("", "", "", lambda r: r["role"], text=True)
WINS = Column(
    "wins",
    f"mean rate{UP}",
    "mean win rate: the share of the other configurations at this target beaten, averaged over each "
    "task's agreement with dense, teacher-forced top-1 and perplexity",
    lambda r: r["wins"],
    "{:.0%}",
)
AGREE = Column(
    "agreement",
    f"rougeL vs dense{UP}",
    "ROUGE-L of the answers against the dense model's, mean over the tasks; higher is better",
    lambda r: r["agreement"],
    "{:.2f}",
    missing="no task was scored against the dense answers",
)


def _measures(row: Row, tasks: dict[str, Score]) -> dict[str, tuple[float, bool]]:
    """The lead measures ``row`` has: name -> (value, higher is better)."""
    found = {t: (row["scores"][t]["value"], True) for t in tasks if t.endswith(AGREEMENT)}
    found |= {"top1": (row["top1"], True), "perplexity": (row["perplexity"], False)}
    return {name: pair for name, pair in found.items() if pair[0] is not None}


def win_rates(rows: list[Row], tasks: dict[str, Score]) -> list[float | None]:
    """Each row's mean win rate against the others (None: no measure shared with another)."""
    measured = [_measures(r, tasks) for r in rows]
    rates: list[float | None] = []
    for i, mine in enumerate(measured):
        shares = []
        for name, (value, higher) in mine.items():
            others = [m[name][0] for j, m in enumerate(measured) if j != i and name in m]
            if others:
                beaten = sum((v < value if higher else v > value) + 0.5 * (v == value) for v in others)
                shares.append(beaten / len(others))
        rates.append(sum(shares) / len(shares) if shares else None)
    return rates


def _entries(rivals: list[Row], tasks: dict[str, Score]) -> list[Row]:
    """The best-rated of ``rivals`` (one target's skipping runs), then the paper's rule's best
    where that is another."""
    agreement = [t for t in tasks if t.endswith(AGREEMENT)]
    rated = []
    for row, rate in zip(rivals, win_rates(rivals, tasks), strict=True):
        values = [row["scores"][t]["value"] for t in agreement if row["scores"][t]["value"] is not None]
        mean = sum(values) / len(values) if values else None
        rated.append({**row, "wins": rate, "agreement": mean})
    ranked = sorted(
        (r for r in rated if r["wins"] is not None),
        key=lambda r: (-r["wins"], math.inf if r["agreement"] is None else -r["agreement"]),
    )
    if not ranked:
        return []
    best = ranked[0]
    paper = next((r for r in ranked if r["method"] == PAPER), None)
    if paper is best:
        return [{**best, "role": f"{BEST}; {PAPERS}"}]
    return [{**best, "role": BEST}] + ([{**paper, "role": PAPERS}] if paper else [])


def summary(rows: list[Row], tasks: dict[str, Score]) -> list[dict[str, Any]]:
    """Per model with a rated target: its table, one or two rows per target ratio."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model and not r["reference"]]
        entries = [
            entry
            for target in sorted({r["target"] for r in mine if r["target"] is not None})
            for entry in _entries([r for r in mine if r["target"] == target], tasks)
        ]
        if not entries:
            continue
        table = grid([TARGET, ROLE, METHOD, WINS, AGREE, TOP1, PERPLEXITY, SKIP, SPEEDUP, IDEAL], entries)
        first = table["rows"][0][0]
        for entry, before, cells in zip(entries[1:], entries, table["rows"][1:], strict=False):
            if entry["target"] == before["target"]:  # one target cell spans its rows
                cells[0]["covered"] = True
                first["rowspan"] = first.get("rowspan", 1) + 1
            else:
                first = cells[0]
        out.append({"model": model, **table})
    return out
