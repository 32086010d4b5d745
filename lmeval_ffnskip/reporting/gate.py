"""The CI regression gate: ``ffnskip baseline`` records a run's scores, ``ffnskip check`` compares.

Per (model, cell) of the baseline: every task's headline score (and each generative task's
agreement with the dense cell) may drop at most its tolerance in points; the achieved skip
ratio must stay within a band of the baseline's; where both sides measured decode speed, the
speedup over dense may not fall below the floor. Exit codes: 0 pass, 1 regression, 2 bad input.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..skip.provenance import PACKAGES
from .results import ResultsError, Run, bench_row

FORMAT = "lmeval-ffnskip-baseline/1"


@dataclass(frozen=True)
class Limits:
    """What a run may lose against its baseline."""

    tolerance: float = 1.0  # points a score may drop
    per_task: dict[str, float] | None = None  # task -> its own tolerance
    skip_band: float = 0.02  # |achieved - baseline| skip ratio allowed
    speedup_floor: float = 0.95  # lowest decode speedup over dense, where speed was measured

    def for_task(self, task: str) -> float:
        per = self.per_task or {}
        return per.get(task, per.get(task.split("/")[0], self.tolerance))


@dataclass(frozen=True)
class Check:
    """One compared quantity."""

    model: str
    cell: str
    what: str
    baseline: float | None
    value: float | None
    limit: str
    ok: bool


def _speedup(run: Run) -> float | None:
    row = bench_row(run)
    return None if row is None else row.get("speedup")


def baseline(runs: list[Run], limits: Limits, source: str) -> dict[str, Any]:
    """The baseline document for ``runs``."""
    return {
        "format": FORMAT,
        "source": source,
        "limits": asdict(limits),
        "versions": runs[0].versions if runs else {},
        "runs": [
            {
                "model": r.model,
                "cell": r.cell,
                "skip_ratio": r.skip_ratio,
                "speedup": _speedup(r),
                "scores": {t: asdict(s) for t, s in r.scores.items()},
            }
            for r in runs
        ],
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


Kind = tuple[Callable[[Any], bool], str]  # a test of a value, and what it must be in words
TEXT: Kind = (lambda v: isinstance(v, str), "a string")
NUMBER: Kind = (_is_number, "a number")
NUMBER_OR_NULL: Kind = (lambda v: v is None or _is_number(v), "a number or null")
COUNT_OR_NULL: Kind = (
    lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    "an integer or null",
)
FLAG: Kind = (lambda v: isinstance(v, bool), "true or false")
OBJECT: Kind = (lambda v: isinstance(v, dict), "an object")
# the keys of each part of a baseline document and what their values must be; optional keys end in ?
DOCUMENT = {
    "runs": (lambda v: isinstance(v, list), "a list"),
    "limits?": OBJECT,
    "versions?": (lambda v: v is None or isinstance(v, dict), "an object or null"),
}
LIMITS = {
    "tolerance?": NUMBER,
    "per_task?": (
        lambda v: v is None or (isinstance(v, dict) and all(map(_is_number, v.values()))),
        "null or an object of task: points",
    ),
    "skip_band?": NUMBER,
    "speedup_floor?": NUMBER,
}
RUN = {
    "model": TEXT,
    "cell": TEXT,
    "skip_ratio": NUMBER_OR_NULL,
    "speedup?": NUMBER_OR_NULL,
    "scores": OBJECT,
}
SCORE = {"metric": TEXT, "value": NUMBER, "higher_is_better": FLAG, "n": COUNT_OR_NULL}


def read_baseline(path: Path) -> dict[str, Any]:
    """Load and validate a baseline file (ResultsError names the file and the problem)."""
    try:
        doc = json.loads(path.read_text())
    except OSError as err:
        raise ResultsError(f"{path}: cannot read the baseline ({err.strerror or err})") from err
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path}: the baseline is not valid JSON ({err})") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ResultsError(
            f"{path}: not an ffnskip baseline (expected format {FORMAT!r}); "
            "write one with `ffnskip baseline RESULTS -o BASELINE.json`"
        )
    problem = _problem(doc)
    if problem:
        raise ResultsError(f"{path}: {problem}; re-record it with `ffnskip baseline RESULTS -o {path}`")
    return doc


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _entry_problem(entry: Any, keys: dict[str, Kind], closed: bool = False) -> str | None:
    """What is wrong with one object of a baseline (``is ...``/``has ...``), or None; ``closed``:
    no keys but ``keys``."""
    if not isinstance(entry, dict):
        return f"is {_shown(entry)}, not an object"
    known = {k.rstrip("?") for k in keys}
    unknown = sorted(set(entry) - known) if closed else []
    if unknown:
        return f"has an unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
    for name, (ok, kind) in keys.items():
        key = name.rstrip("?")
        if key not in entry:
            if key == name:
                return f"has no {key!r}"
        elif not ok(entry[key]):
            return f"has {key!r} = {_shown(entry[key])}, not {kind}"
    return None


def _problem(doc: dict[str, Any]) -> str | None:
    """The first broken part of a baseline document of the right format, or None."""
    parts = [("the document", doc, DOCUMENT, False), ("limits", doc.get("limits", {}), LIMITS, True)]
    for where, entry, keys, closed in parts:
        if problem := _entry_problem(entry, keys, closed):
            return f"{where} {problem}"
    for i, run in enumerate(doc["runs"]):
        where = f"runs[{i}]"
        if isinstance(run, dict) and isinstance(run.get("model"), str) and isinstance(run.get("cell"), str):
            where += f" ({run['model']}/{run['cell']})"
        if problem := _entry_problem(run, RUN):
            return f"{where} {problem}"
        for task, score in run["scores"].items():
            if problem := _entry_problem(score, SCORE):
                return f"{where}, score {task!r} {problem}"
    return None


def compare(runs: list[Run], doc: dict[str, Any], limits: Limits) -> list[Check]:
    """Every check of ``runs`` against the baseline document; ResultsError if they cannot be compared."""
    found = {(r.model, r.cell): r for r in runs}
    checks = []
    for base in doc["runs"]:
        key = (base["model"], base["cell"])
        run = found.get(key)
        if run is None:
            have = ", ".join(f"{m}/{c}" for m, c in sorted(found)) or "none"
            raise ResultsError(
                f"the results have no run for {key[0]}/{key[1]} that the baseline has "
                f"(results have: {have}); run the same sweep config"
            )
        for task, b in base["scores"].items():
            s = run.scores.get(task)
            if s is None:
                raise ResultsError(f"{run.path}: no score for {task}, which the baseline has")
            if b["n"] != s.n:
                raise ResultsError(
                    f"{run.path}: {task} was scored on {s.n} samples, the baseline on "
                    f"{b['n']}; compare runs with the same --limit"
                )
            tol = limits.for_task(task)
            drop = (b["value"] - s.value) if b["higher_is_better"] else (s.value - b["value"])
            what = f"{task} {s.metric}"
            checks.append(Check(*key, what, b["value"], s.value, f"drop <= {tol:g}", drop <= tol + 1e-9))
        if base["skip_ratio"] is not None:
            ratio, band = run.skip_ratio, limits.skip_band
            ok = ratio is not None and abs(ratio - base["skip_ratio"]) <= band + 1e-9
            checks.append(Check(*key, "achieved skip ratio", base["skip_ratio"], ratio, f"+-{band:g}", ok))
        speed = _speedup(run)
        if base.get("speedup") is not None and speed is not None and not run.is_reference:
            floor = limits.speedup_floor
            checks.append(
                Check(*key, "decode speedup", base["speedup"], speed, f">= {floor:g}", speed >= floor)
            )
    return checks


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def table(checks: list[Check]) -> str:
    """A plain-text table of the checks, failures marked."""
    lines = [f"{'':3}{'model':<16}{'cell':<18}{'check':<44}{'baseline':>10}{'now':>10}  limit"]
    for c in checks:
        mark = "ok" if c.ok else "!!"
        lines.append(
            f"{mark:3}{c.model:<16}{c.cell:<18}{c.what:<44}{_fmt(c.baseline):>10}"
            f"{_fmt(c.value):>10}  {c.limit}"
        )
    failed = sum(not c.ok for c in checks)
    lines.append(f"{len(checks)} checks, {failed} failed: {'REGRESSION' if failed else 'pass'}")
    return "\n".join(lines)


def markdown(checks: list[Check]) -> str:
    """A summary for a CI job page: the verdict, then the failed checks (or all, when none failed)."""
    failed = [c for c in checks if not c.ok]
    verdict = "REGRESSION" if failed else "pass"
    head = f"### ffnskip check: {verdict} ({len(checks)} checks, {len(failed)} failed)"
    rows = ["| | model | cell | check | baseline | now | limit |", "|---|---|---|---|---:|---:|---|"]
    rows += [
        f"| {'pass' if c.ok else 'FAIL'} | {c.model} | {c.cell} | {c.what} | {_fmt(c.baseline)} | "
        f"{_fmt(c.value)} | {c.limit} |"
        for c in failed or checks
    ]
    return "\n".join([head, "", *rows, ""])


def version_notes(runs: list[Run], doc: dict[str, Any]) -> list[str]:
    """One line per package whose version differs between the baseline and the results (the
    source commit is recorded, not compared: every change of ours would differ)."""
    base = doc.get("versions")
    if not base:
        return ["note: the baseline records no package versions (written before they were recorded)"]
    now: dict[str, set[str]] = {}
    for run in runs:
        for name, version in run.versions.items():
            now.setdefault(name, set()).add(str(version))
    return [
        f"note: the baseline was made with {name} {base[name]}, these results with {', '.join(sorted(found))}"
        for name, found in sorted(now.items())
        if name in base and name in PACKAGES and found != {str(base[name])}
    ]


def limits_from(doc: dict[str, Any], overrides: dict[str, Any]) -> Limits:
    """The baseline's limits with command-line overrides (None: keep the baseline's)."""
    merged = {**doc.get("limits", {}), **{k: v for k, v in overrides.items() if v is not None}}
    if overrides.get("per_task"):
        merged["per_task"] = {**(doc.get("limits", {}).get("per_task") or {}), **overrides["per_task"]}
    return Limits(**merged)
