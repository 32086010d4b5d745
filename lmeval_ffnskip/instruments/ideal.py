"""A bench's speedups beside the ideal: what skipping a share s of the FFN blocks could at best
save, ``t_dense / (t_dense - s * t_ffn)``, with ``t_ffn`` the time skipping every block saves."""

from __future__ import annotations

from ..skip.naming import DENSE
from ..skip.rules import known_traits
from .options import SPEED_STATS


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
