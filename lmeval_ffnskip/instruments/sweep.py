"""``ffnskip sweep CONFIG``: lm-eval tasks x methods x skip ratios into one results directory.

Layout: ``OUT/<model>/<cell>/results.json`` (lm-eval's results format, ``config["ffnskip"]``
holding the policy and stats, plus ``agreement`` with the model's dense cell) and
``samples_<task>_sweep.jsonl`` beside it; ``OUT/<model>/flops.json`` / ``bench.json`` /
``calibrate.json`` / ``fidelity.json`` when asked.
A cell is written to a ``.partial`` folder and renamed when complete, so an interrupted sweep
loses nothing finished and a rerun computes only the missing cells.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..taskdata.data import read_jsonl
from ..taskdata.metrics import rouge

SHIPPED = Path(__file__).resolve().parent / "sweeps"
# instrument arguments the sweep fills itself (the model, its device, no progress output)
FILLED = ("pretrained", "device", "progress", "log")


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: every model runs a ``dense`` cell and one cell per method x target x grid point."""

    tasks: list[str]
    models: list[str] = field(default_factory=lambda: ["smollm2-135m"])
    methods: list[str] = field(default_factory=lambda: ["ffnskip"])
    targets: list[float] = field(default_factory=lambda: [0.25])
    grid: dict[str, list[Any]] = field(default_factory=dict)  # further model_args swept
    model_args: dict[str, Any] = field(default_factory=dict)  # fixed for every cell
    limit: int | None = None
    batch_size: int = 1
    device: str = "cpu"
    gen_kwargs: str | None = None
    flops: dict[str, Any] | None = None  # {"context": 512}
    bench: dict[str, Any] | None = None  # {"batch_sizes": [1], "new_tokens": 64, "reps": 3}
    calibrate: dict[str, Any] | None = None  # {"target": 0.25}: the similarity curve per model
    fidelity: dict[str, Any] | None = None  # `ffnskip fidelity` options: teacher-forced agreement
    include_path: list[str] = field(default_factory=list)  # task YAML folders (relative: to the config)

    @classmethod
    def load(cls, path: Path) -> SweepConfig:
        """Read a YAML config (a path, or the name of a shipped one); unknown keys are errors."""
        import yaml

        if not path.exists() and (SHIPPED / f"{path}.yaml").exists():
            path = SHIPPED / f"{path}.yaml"
        raw = yaml.safe_load(path.read_text())
        valid = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(raw, dict) or "tasks" not in raw:
            raise ValueError(f"{path}: a sweep config is a mapping with at least `tasks`")
        if unknown := sorted(set(raw) - valid):
            raise ValueError(f"{path}: unknown keys {unknown}; valid: {sorted(valid)}")
        include = raw.get("include_path") or []
        include = [include] if isinstance(include, str) else include
        folders = [(path.parent / p).resolve() for p in include]
        if missing := [str(f) for f in folders if not f.is_dir()]:
            raise ValueError(f"{path}: include_path {', '.join(missing)} is not a folder")
        return cls(**{**raw, "include_path": [str(f) for f in folders]})

    def task_manager(self) -> Any:
        """lm-eval's task index: the built-ins, ours, and the config's ``include_path`` folders."""
        from lm_eval.tasks import TaskManager

        return TaskManager(include_path=self.include_path or None)


def validate(cfg: SweepConfig, task_manager: Any) -> None:
    """Check the whole config before anything runs: every task resolvable, every cell's
    model_args accepted by ``--model ffnskip`` (and, for fixed-depth methods, by each model's
    depth). Raises ValueError with one line naming the problem and the valid choices."""
    import difflib

    from transformers import AutoConfig

    from ..harness.checkpoints import resolve
    from ..harness.lm import POLICY_ARGS, valid_args
    from ..skip.policy import SkipPolicy

    known = set(task_manager.all_tasks)
    for task in cfg.tasks:
        if task not in known:
            near = difflib.get_close_matches(task, sorted(known), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else "; add its folder to include_path"
            raise ValueError(f"tasks: {task!r} is not a task lm-eval knows{hint}")
    for name, run in instruments().items():
        options = getattr(cfg, name) or {}
        valid = set(inspect.signature(run).parameters) - set(FILLED)
        if unknown := sorted(set(options) - valid):
            raise ValueError(
                f"{name}: unknown options {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
            )
    depths = {m: AutoConfig.from_pretrained(resolve(m)).num_hidden_layers for m in cfg.models}
    for cell in cells(cfg):
        if unknown := sorted(set(cell.model_args) - valid_args()):
            valid = ", ".join(sorted(valid_args()))
            raise ValueError(f"cell {cell.name}: unknown model_args {', '.join(unknown)}; valid: {valid}")
        try:
            policy = SkipPolicy.from_args({k: v for k, v in cell.model_args.items() if k in POLICY_ARGS})
            if policy.method != "spread":  # spread's limits need the model's calibration
                for n_layers in depths.values():
                    policy.layout(n_layers)
        except ValueError as err:
            raise ValueError(f"cell {cell.name}: {err}") from err


@dataclass(frozen=True)
class Cell:
    name: str
    model_args: dict[str, Any]


def cells(cfg: SweepConfig) -> list[Cell]:
    """The dense cell, then method x target x grid points, each with its full model_args."""
    out = [Cell("dense", {**cfg.model_args, "method": "dense"})]
    keys = sorted(cfg.grid)
    for method, target, *point in itertools.product(cfg.methods, cfg.targets, *(cfg.grid[k] for k in keys)):
        extra = dict(zip(keys, point, strict=True))
        name = "-".join([method, f"{target:g}", *(f"{k}{v}" for k, v in extra.items())])
        out.append(Cell(name, {**cfg.model_args, "method": method, "target_skip": target, **extra}))
    return out


def _write_json(path: Path, payload: Any) -> None:
    """Write JSON whole or not at all."""
    from lm_eval.utils import handle_non_serializable

    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, default=handle_non_serializable))
    os.replace(tmp, path)


def run_cell(cfg: SweepConfig, model: str, cell: Cell, folder: Path, task_manager: object) -> bool:
    """Evaluate one cell into ``folder`` unless it is already there; True if it ran."""
    from lm_eval import simple_evaluate
    from lm_eval.utils import handle_non_serializable

    from ..skip.provenance import versions

    if (folder / "results.json").exists():
        return False
    partial = folder.with_name(f"{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
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
        (partial / f"samples_{task}_sweep.jsonl").write_text("".join(lines))
    payload = {**out, "sweep_cell": dataclasses.asdict(cell), "versions": versions()}
    _write_json(partial / "results.json", payload)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return True


def _answers(folder: Path, task: str) -> dict[int, str]:
    samples = read_jsonl(folder / f"samples_{task}_sweep.jsonl")
    return {s["doc_id"]: s["filtered_resps"][0] for s in samples}


def agreement(dense: Path, cell: Path, tokenizer: Any) -> dict[str, dict[str, Any]]:
    """Per generative task, how closely the cell's answers follow the dense cell's: exact match,
    ROUGE-L against the dense answer, and the first token where they diverge (None: identical)."""
    configs = json.loads((cell / "results.json").read_text())["configs"]
    out = {}
    for task, config in configs.items():
        if (
            config.get("output_type") != "generate_until"
            or not (cell / f"samples_{task}_sweep.jsonl").exists()
        ):
            continue
        ref, ours = _answers(dense, task), _answers(cell, task)
        rows = []
        for doc_id in sorted(set(ref) & set(ours)):
            a, b = tokenizer.encode(ref[doc_id]), tokenizer.encode(ours[doc_id])
            diverge = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
            if diverge is None and len(a) != len(b):
                diverge = min(len(a), len(b))
            same = ref[doc_id] == ours[doc_id]  # ROUGE of two empty answers is 0; they agree fully
            rows.append(
                {
                    "doc_id": doc_id,
                    "exact_match": same,
                    "rougeL": 100.0 if same else rouge(ours[doc_id], ref[doc_id])["rougeL"],
                    "first_divergence": diverge,
                }
            )
        n = len(rows) or 1
        diverged = [r["first_divergence"] for r in rows if r["first_divergence"] is not None]
        out[task] = {
            "exact_match": sum(r["exact_match"] for r in rows) / n,
            "rougeL": sum(r["rougeL"] for r in rows) / n,
            "mean_first_divergence": sum(diverged) / len(diverged) if diverged else None,
            "samples": rows,
        }
    return out


def model_slug(model: str) -> str:
    return model.strip("/").replace("/", "__")


def run(cfg: SweepConfig, out: Path, progress: bool = True) -> list[dict[str, Any]]:
    """Run every missing cell, then agreement, FLOPs and bench per model; returns the summary rows."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from ..harness.checkpoints import resolve

    task_manager = cfg.task_manager()
    validate(cfg, task_manager)
    todo = [(m, c) for m in cfg.models for c in cells(cfg)]
    ran = 0
    for model, cell in tqdm(todo, desc="sweep cells", disable=not progress):
        ran += run_cell(cfg, model, cell, out / model_slug(model) / cell.name, task_manager)
    rows = []
    for model in cfg.models:
        root = out / model_slug(model)
        tokenizer = AutoTokenizer.from_pretrained(resolve(model))
        for cell in cells(cfg):
            path = root / cell.name / "results.json"
            results = json.loads(path.read_text())
            if cell.name != "dense" and "agreement" not in results:
                results["agreement"] = agreement(root / "dense", root / cell.name, tokenizer)
                _write_json(path, results)
            rows.append(summary_row(model, cell, results))
        _extras(cfg, model, root)
    _write_json(out / "summary.json", {"config": dataclasses.asdict(cfg), "rows": rows, "cells_run": ran})
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


def instruments() -> dict[str, Callable[..., dict[str, Any]]]:
    """The per-model measurements a config can ask for, by its key: library functions that take
    the config's options as keyword arguments and return the JSON written beside the cells."""
    from ..harness.calibrate import run_calibrate
    from .bench import run_bench
    from .fidelity import run_fidelity
    from .flops import run_flops

    return {"flops": run_flops, "bench": run_bench, "calibrate": run_calibrate, "fidelity": run_fidelity}


def _extras(cfg: SweepConfig, model: str, root: Path) -> None:
    """FLOPs, decode speed, calibration and fidelity per model, once (skipped when their JSON exists)."""
    for name, run in instruments().items():
        options = getattr(cfg, name)
        target = root / f"{name}.json"
        if options is None or target.exists():
            continue
        params = inspect.signature(run).parameters
        fixed = {k: v for k, v in (("device", cfg.device), ("progress", False)) if k in params}
        _write_json(target, run(pretrained=model, **fixed, **options))
