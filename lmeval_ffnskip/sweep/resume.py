"""What a finished result was made with, and whether a rerun may reuse it: one cell's evaluation
into its folder (written whole, then renamed), ``stale`` for a cell or a per-model JSON, and the
results writer that lm-eval's objects need."""

from __future__ import annotations

import dataclasses
import json
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..taskdata.jsonfiles import write_json
from .config import Cell, SweepConfig

_UNSET = object()  # a key one side of a comparison lacks


def write_results(path: Path, payload: Any) -> None:
    """Write JSON whole or not at all (lm-eval's results hold objects only it serialises)."""
    from lm_eval.utils import handle_non_serializable

    write_json(path, payload, default=handle_non_serializable)


def cell_settings(cfg: SweepConfig, model: str, cell: Cell) -> dict[str, Any]:
    """Everything that determines a cell's results: a finished cell is reused only for these."""
    from ..skip.provenance import versions

    return {
        "model": model,
        "tasks": list(cfg.tasks),
        "limit": cfg.limit,
        "batch_size": cfg.batch_size,
        "device": cfg.device,
        "gen_kwargs": cfg.gen_kwargs,
        "model_args": cell.model_args,
        "include_path": list(cfg.include_path),
        "versions": versions(),
    }


def _shown(value: Any) -> str:
    return "unset" if value is _UNSET else json.dumps(value)


def _differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key (recorded -> wanted)`` for every key whose values differ, mappings key by key."""
    out = []
    for key in [*wanted, *(k for k in recorded if k not in wanted)]:
        old, new = recorded.get(key, _UNSET), wanted.get(key, _UNSET)
        if isinstance(old, dict) and isinstance(new, dict):
            out += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key} ({_shown(old)} -> {_shown(new)})")
    return out


def stale(recorded: Any, wanted: Mapping[str, Any]) -> str | None:
    """Why results recorded with settings ``recorded`` are not what ``wanted`` would make (None:
    they are), in words for a log line."""
    if not isinstance(recorded, dict):
        return "it records no settings (an older version made it)"
    changed = _differences(recorded, json.loads(json.dumps(wanted)))
    return f"it was made with other {', '.join(changed)}" if changed else None


def _evaluate(cfg: SweepConfig, model: str, cell: Cell, folder: Path, task_manager: object) -> None:
    """Evaluate one cell into ``folder``: samples files, then ``results.json``."""
    from lm_eval import simple_evaluate
    from lm_eval.utils import handle_non_serializable

    from ..skip.provenance import versions

    settings = cell_settings(cfg, model, cell)
    out = simple_evaluate(
        model="ffnskip",
        model_args={"pretrained": model, **cell.model_args},
        tasks=list(cfg.tasks),
        limit=cfg.limit,
        device=cfg.device,
        batch_size=cfg.batch_size,
        gen_kwargs=cfg.gen_kwargs,
        log_samples=True,
        task_manager=task_manager,
    )
    for task, samples in out.pop("samples").items():
        lines = (json.dumps(s, default=handle_non_serializable) + "\n" for s in samples)
        (folder / f"samples_{task}_sweep.jsonl").write_text("".join(lines))
    record = {**dataclasses.asdict(cell), "settings": settings, "run": uuid.uuid4().hex}
    write_results(folder / "results.json", {**out, "sweep_cell": record, "versions": versions()})


def run_cell(
    cfg: SweepConfig, model: str, cell: Cell, folder: Path, task_manager: object, log: Callable[[str], None]
) -> bool:
    """Evaluate one cell into ``folder`` unless it holds results of the same settings (``log``
    says why one is run again); True if it ran."""
    done = folder / "results.json"
    if done.exists():
        recorded = json.loads(done.read_text()).get("sweep_cell", {}).get("settings")
        why = stale(recorded, cell_settings(cfg, model, cell))
        if why is None:
            return False
        log(f"rerunning cell {cell.name} of {model}: {why}")
    partial = folder.with_name(f"{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        _evaluate(cfg, model, cell, partial, task_manager)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # an unfinished cell leaves nothing behind
        raise
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return True


def model_slug(model: str) -> str:
    """A model name as a folder name."""
    return model.strip("/").replace("/", "__")
