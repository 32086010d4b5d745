"""Run a sweep: every cell not already there with the same settings, each skip cell's agreement
with dense, then the per-model instruments the config asks for, and the summary."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..instruments.options import BenchOptions, CalibrateOptions, FidelityOptions, FlopsOptions
from ..skip.naming import DENSE
from .agreement import agreement
from .config import INSTRUMENTS, Cell, SweepConfig, cells, instrument_options, validate
from .resume import model_slug, run_cell, stale, write_results

_log = logging.getLogger(__name__)


def run(
    cfg: SweepConfig, out: Path, progress: bool = True, log: Callable[[str], None] = _log.warning
) -> list[dict[str, Any]]:
    """Run every cell not already there with the same settings, then agreement, FLOPs, bench,
    calibration and fidelity per model (``log``: a line per result made again, and one where
    results of a modified checkout were reused); returns the summary rows."""
    from tqdm import tqdm

    from ..skip.provenance import versions

    task_manager = cfg.task_manager()
    validate(cfg, task_manager)
    todo = [(m, c) for m in cfg.models for c in cells(cfg)]

    def above_bar(line: str) -> None:
        with tqdm.external_write_mode():  # a line of its own, not after the progress bar
            log(line)

    ran = 0
    for model, cell in tqdm(todo, desc="sweep cells", disable=not progress):
        ran += run_cell(cfg, model, cell, out / model_slug(model) / cell.name, task_manager, above_bar)
    reused = len(todo) - ran
    rows = []
    for model in cfg.models:
        rows += _rows(cfg, model, out / model_slug(model))
        reused += _extras(cfg, model, out / model_slug(model), log)
    commit = versions()["lmeval-ffnskip commit"]
    if reused and commit and commit.endswith("+modified"):
        log(
            f"reused {reused} finished results of {commit}, which names no particular edit: code "
            "changed since they ran goes unnoticed; use a new --out after editing the package"
        )
    write_results(out / "summary.json", {"config": dataclasses.asdict(cfg), "rows": rows, "cells_run": ran})
    return rows


def _rows(cfg: SweepConfig, model: str, root: Path) -> list[dict[str, Any]]:
    """The model's summary rows; a skip cell's agreement with dense is measured (again) unless it
    was measured against the dense cell's present run."""
    from transformers import AutoTokenizer

    from ..inputs.checkpoints import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve(model))
    dense_run = json.loads((root / DENSE / "results.json").read_text())["sweep_cell"]["run"]
    rows = []
    for cell in cells(cfg):
        path = root / cell.name / "results.json"
        results = json.loads(path.read_text())
        if cell.name != DENSE and results.get("agreement_dense_run") != dense_run:
            results["agreement"] = agreement(root / DENSE, root / cell.name, tokenizer)
            results["agreement_dense_run"] = dense_run
            write_results(path, results)
        rows.append(summary_row(model, cell, results))
    return rows


def summary_row(model: str, cell: Cell, results: dict[str, Any]) -> dict[str, Any]:
    """One line of the sweep table: the cell, its achieved skip ratio, scores and agreement."""
    stats = results["config"]["ffnskip"]["stats"]
    scores = {
        f"{task}/{metric.split(',')[0]}": value
        for task, metrics in results["results"].items()
        for metric, value in metrics.items()
        if "_stderr" not in metric and metric != "alias" and isinstance(value, int | float)
    }
    agree = {
        f"{t}/agreement_{k}": v[k]
        for t, v in results.get("agreement", {}).items()
        for k in ("exact_match", "rougeL")
    }
    return {
        "model": model,
        "cell": cell.name,
        **{k: cell.model_args.get(k) for k in ("method", "target_skip")},
        "skip_ratio": stats["skip_ratio_eligible"],
        "never_reached_threshold": stats["never_reached_threshold"],
        **scores,
        **agree,
    }


def _extras(cfg: SweepConfig, model: str, root: Path, log: Callable[[str], None]) -> int:
    """FLOPs, decode speed, calibration and fidelity per model, each unless its JSON holds results
    of the same model, device, options and versions (``log`` says why one is made again); returns
    how many were reused."""
    from ..instruments import bench, calibrate, fidelity, flops
    from ..skip.provenance import versions

    runs = {
        FlopsOptions: flops.run_flops,
        BenchOptions: functools.partial(bench.run_bench, progress=False),
        CalibrateOptions: calibrate.run_calibrate,
        FidelityOptions: fidelity.run_fidelity,
    }
    reused = 0
    for name in INSTRUMENTS:
        options = getattr(cfg, name)
        if options is None:
            continue
        target = root / f"{name}.json"
        settings = {"model": model, "device": cfg.device, "options": options, "versions": versions()}
        if target.exists():
            why = stale(json.loads(target.read_text()).get("sweep"), settings)
            if why is None:
                reused += 1
                continue
            log(f"rerunning {name}.json of {model}: {why}")
        made = instrument_options(name, options, model, cfg.device)
        write_results(target, {**runs[type(made)](made), "sweep": settings})
    return reused
