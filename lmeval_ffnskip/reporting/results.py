"""Read a results directory (``ffnskip sweep`` output or plain lm-eval ``--output_path`` folders)
into one row per evaluated configuration, for ``ffnskip report``, ``check`` and ``baseline``.

A run is keyed by (model, cell): the cell is ``dense`` or ``<method>-<target>[-<arg><value>...]``
as ``ffnskip sweep`` names it. Scores are in points: lm-eval's 0-1 metrics (accuracy, exact
match, rates) are multiplied by 100; ROUGE, BLEU and perplexities are kept as reported.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..skip.naming import DENSE, config_name
from ..skip.policy import PolicyFields
from ..skip.rules import known_traits
from ..taskdata.jsonfiles import read_jsonl

# metrics reported on their own scale (prefixes); every other metric is a 0-1 share
RAW_METRICS = (
    "rouge",
    "bleu",
    "chrf",
    "ter",
    "perplexity",
    "word_perplexity",
    "byte_perplexity",
    "bits_per_byte",
)
NAMED_ARGS = ("method", "target_skip", "pretrained")  # model_args not spelled out in a cell name
EXTRAS = ("flops", "bench", "calibrate", "fidelity")  # per-model measurement files beside the cell folders
AGREEMENT = "/agreement"  # a task's agreement-with-dense score is the task name and this


class ResultsError(ValueError):
    """A results file or directory that cannot be used, with the path and the problem."""


def points(metric: str, value: float) -> float:
    """A metric in points: 0-1 metrics x100, ROUGE/BLEU/perplexities unchanged."""
    return value if metric.startswith(RAW_METRICS) else 100 * value


@dataclass(frozen=True)
class Score:
    """One task's headline metric (the first of its metric_list) in points."""

    metric: str
    value: float
    higher_is_better: bool
    n: int | None


@dataclass
class Run:
    """One evaluated configuration of one model."""

    model: str
    cell: str
    method: str
    target: float | None
    path: Path
    model_args: dict[str, Any]
    ffnskip: dict[str, Any]  # policy, layout, stats (empty for --model hf)
    scores: dict[str, Score]  # task (and "<task>/agreement") -> headline score
    metrics: dict[str, dict[str, float]]  # task -> every numeric metric, raw
    device: str | None
    dtype: str | None
    agreement: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)  # torch, transformers, lm_eval
    extras: dict[str, Any] = field(default_factory=dict)  # EXTRAS found beside the cell folder

    @property
    def traits(self) -> dict[str, Any]:
        """What the run's rule declares (``rules.traits``): as recorded in the results file, else
        looked up by name (files from before the record)."""
        return self.ffnskip.get("rule") or known_traits(self.method)

    @property
    def is_reference(self) -> bool:
        """The run the others are compared with (dense)."""
        return bool(self.traits["reference"])

    @property
    def skips_layers(self) -> bool:
        return bool(self.traits["skips_layers"])

    @property
    def threshold_trigger(self) -> bool:
        """Its rule waits for a similarity threshold (``never_reached_threshold`` is the worst case)."""
        return bool(self.traits["threshold_trigger"])

    @property
    def stats(self) -> dict[str, Any]:
        return self.ffnskip.get("stats", {})

    @property
    def config(self) -> str:
        """The bench / fidelity name of this run's configuration (``dense``, ``static-0.25``)."""
        return self.method if self.is_reference else config_name(self.method, self.target)

    @property
    def skip_ratio(self) -> float | None:
        """Achieved share of FFN blocks skipped over eligible tokens (0 for dense runs)."""
        return 0.0 if self.is_reference else self.stats.get("skip_ratio_eligible")

    @property
    def folder(self) -> Path:
        return self.path.parent

    def samples(self, task: str) -> list[dict[str, Any]]:
        """The run's logged samples of a task ([] when it logged none)."""
        files = sorted(self.folder.glob(f"samples_{task}_*.jsonl"))
        return read_jsonl(files[-1]) if files else []


def cell_name(model_args: dict[str, Any]) -> str:
    """``ffnskip sweep``'s name for a configuration: ``dense`` or ``method-target[-argvalue...]``."""
    method = str(model_args.get("method", "ffnskip"))
    if known_traits(method)["reference"]:
        return method
    extra = [f"{k}{v}" for k, v in sorted(model_args.items()) if k not in NAMED_ARGS]
    return "-".join(
        [config_name(method, float(model_args.get("target_skip", PolicyFields.target_skip))), *extra]
    )


def _headline(task: str, results: dict[str, Any]) -> Score | None:
    metrics = results["results"].get(task, {})
    listed = results.get("configs", {}).get(task, {}).get("metric_list") or []
    names = [m["metric"] for m in listed] or [k.split(",")[0] for k in metrics]
    for name in names:
        key = next((k for k in metrics if k.split(",")[0] == name and "_stderr" not in k), None)
        if key is None or not isinstance(metrics[key], int | float) or isinstance(metrics[key], bool):
            continue
        higher = results.get("higher_is_better", {}).get(task, {}).get(name, True)
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        return Score(name, points(name, float(metrics[key])), bool(higher), n)
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ResultsError(f"{path}: not readable as JSON ({err})") from err


def load_run(path: Path) -> Run:
    """Parse one lm-eval results JSON (a sweep cell's or lm-eval's own)."""
    results = _read_json(path)
    try:
        config = results["config"]
        raw_args = config["model_args"]
        task_results = results["results"]
    except (KeyError, TypeError) as err:
        raise ResultsError(f"{path}: not an lm-eval results file (no {err})") from err
    if isinstance(raw_args, str):  # lm-eval keeps the CLI string when given one
        raw_args = dict(kv.split("=", 1) for kv in raw_args.split(",") if "=" in kv)
    args = dict(raw_args)
    if config.get("model") != "ffnskip":
        args["method"] = DENSE
    args.setdefault("method", "ffnskip")
    cell = results.get("sweep_cell", {}).get("name") or cell_name(args)
    scores, metrics = {}, {}
    for task in task_results:
        metrics[task] = {
            k.split(",")[0]: float(v)
            for k, v in task_results[task].items()
            if isinstance(v, int | float) and not isinstance(v, bool) and "_stderr" not in k
        }
        if (score := _headline(task, results)) is not None:
            scores[task] = score
    agreement = results.get("agreement", {})
    for task, agree in agreement.items():
        scores[f"{task}{AGREEMENT}"] = Score("rougeL_vs_dense", agree["rougeL"], True, len(agree["samples"]))
    target = args.get("target_skip")
    ffnskip = config.get("ffnskip") or {}
    reference = (ffnskip.get("rule") or known_traits(str(args["method"])))["reference"]
    return Run(
        model=str(args.get("pretrained", "?")),
        cell=cell,
        method=str(args["method"]),
        target=None if reference or target is None else float(target),
        path=path,
        model_args=args,
        ffnskip=ffnskip,
        scores=scores,
        metrics=metrics,
        device=config.get("device"),
        dtype=config.get("model_dtype"),
        agreement=agreement,
        # a sweep cell records all three; lm-eval's own results file two of them
        versions=results.get("versions")
        or {"transformers": results.get("transformers_version"), "lm_eval": results.get("lm_eval_version")},
    )


def results_files(root: Path) -> list[Path]:
    """Every finished results JSON under ``root`` (sweep cells and lm-eval's ``results_*.json``)."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ResultsError(f"{root}: no such results file or directory")
    files = [
        p
        for pattern in ("results.json", "results_*.json")
        for p in root.rglob(pattern)
        if not any(part.endswith(".partial") for part in p.parts)
    ]
    if not files:
        raise ResultsError(
            f"{root}: no results.json (ffnskip sweep) or results_*.json (lm_eval --output_path) in it"
        )
    return sorted(files)


def load_runs(root: Path) -> list[Run]:
    """All runs under ``root``, with the measurement files beside their folders (read once per
    folder); of several files for the same (model, cell), the newest name wins."""
    runs: dict[tuple[str, str], Run] = {}
    extras: dict[Path, dict[str, Any]] = {}
    for path in results_files(root):
        run = load_run(path)
        folder = run.folder.parent
        if folder not in extras:
            found = [(name, folder / f"{name}.json") for name in EXTRAS]
            extras[folder] = {name: _read_json(p) for name, p in found if p.exists()}
        run.extras = extras[folder]
        runs[(run.model, run.cell)] = run
    return sorted(runs.values(), key=lambda r: (r.model, not r.is_reference, r.method, r.target or 0, r.cell))


def by_model(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs grouped by model, in the order given."""
    out: dict[str, list[Run]] = {}
    for run in runs:
        out.setdefault(run.model, []).append(run)
    return out


def dense_run(runs: list[Run]) -> Run | None:
    """The run the others of ``runs`` (one model's) are compared with, if there is one."""
    return next((r for r in runs if r.is_reference), None)


def read_bench(path: Path) -> dict[str, Any]:
    """An ``ffnskip bench --json`` file (ResultsError names the file and what is wrong)."""
    doc = _read_json(path)
    if not isinstance(doc, dict) or "environment" not in doc or not isinstance(doc.get("rows"), list):
        raise ResultsError(
            f"{path}: not an ffnskip bench JSON (no environment and rows); write one with --json"
        )
    return doc


def bench_row(run: Run, config: str | None = None) -> dict[str, Any] | None:
    """The decode-speed row of ``bench.json`` beside ``run`` measured for ``config`` (default: the
    run's own configuration), at the smallest batch size measured."""
    bench = run.extras.get("bench")
    if not bench:
        return None
    name = config or run.config
    rows = sorted((r for r in bench["rows"] if r["config"] == name), key=lambda r: r["batch_size"])
    return rows[0] if rows else None


def fidelity_row(run: Run) -> dict[str, Any] | None:
    """The teacher-forced row of ``fidelity.json`` beside ``run`` for the run's own configuration."""
    rows = (run.extras.get("fidelity") or {}).get("rows", [])
    return next((r for r in rows if r["name"] == run.config), None)


def flops_per_token(run: Run) -> float | None:
    """Per-token decode FLOPs of this run's own skip pattern, from ``flops.json``'s dense split."""
    flops = run.extras.get("flops")
    if not flops:
        return None
    dense = next(r for r in flops["rows"] if r["config"] == DENSE)
    freq = run.stats.get("layer_skip_frequency")
    if run.is_reference or not freq:
        return float(dense["total"])
    saved = sum(f * c for f, c in zip(freq, dense["ffn_per_layer"], strict=True))
    if run.skips_layers:  # attention too; older flops.json lack it (rerun ffnskip flops)
        if "attention_per_layer" not in dense:
            return None
        saved += sum(f * c for f, c in zip(freq, dense["attention_per_layer"], strict=True))
    return dense["total"] - saved


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
