"""``ffnskip sweep CONFIG``: lm-eval tasks x methods x skip ratios into one results directory.

Layout: ``OUT/<model>/<cell>/results.json`` (lm-eval's results format, ``config["ffnskip"]``
holding the policy and stats, plus ``agreement`` with the model's dense cell) and
``samples_<task>_sweep.jsonl`` beside it; ``OUT/<model>/flops.json`` / ``bench.json`` /
``calibrate.json`` / ``fidelity.json`` when asked.
A cell is written to a ``.partial`` folder and renamed when complete, so an interrupted sweep
loses nothing finished and a rerun computes only the missing cells.

Resuming: a cell records everything that determines it (``sweep_cell.settings``: the model, the
tasks, limit, batch size, device, gen_kwargs, every model_arg, the include_path folders, and the
package versions and source commit of ``provenance.versions()``), and so does each per-model JSON
(``sweep``: the model, the device, the instrument's options, the versions). A rerun into the same
folder reuses one only when all of it matches; otherwise it runs it again (the old one stays until
the new one is complete) and logs one line naming the keys that differ. The commit is compared as
recorded, so results of another commit are made again. A checkout with uncommitted edits records
``<commit>+modified`` whatever the edits, so such results are reused after further edits; the
sweep says so in one line when it reuses any (a fresh ``--out`` after changing the code avoids it).
A skip cell's agreement is measured against one run of the dense cell (``sweep_cell.run``), and
measured again when the dense cell has run again since.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import json
import logging
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..harness.options import Methods, Number, Words, check_all
from ..skip.naming import DENSE, config_name
from ..taskdata.data import read_jsonl, write_json
from ..taskdata.metrics import rouge

SHIPPED = Path(__file__).resolve().parent / "sweeps"
# instrument arguments the sweep fills itself (the model, its device, no progress output)
FILLED = ("pretrained", "device", "progress", "log")
# the types and ranges of a config's own values (the instruments check their options themselves)
FIELDS = {
    "tasks": Words(empty=False),
    "models": Words(empty=False),
    "methods": Methods(empty=True),
    "targets": Number(float, 0, 1, many=True),
    "limit": Number(float, 0, open=True, optional=True),  # below 1: a fraction of each task
    "batch_size": Number(int, 1),  # or lm-eval's "auto"
}
_log = logging.getLogger(__name__)
_UNSET = object()  # a key one side of a comparison lacks


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: every model runs a ``dense`` cell and one cell per method x target x grid point."""

    tasks: list[str]
    models: list[str] = field(default_factory=lambda: ["smollm2-135m"])
    methods: list[str] = field(default_factory=lambda: ["ffnskip"])
    targets: list[float] = field(default_factory=lambda: [0.25])
    grid: dict[str, list[Any]] = field(default_factory=dict)  # further model_args swept
    model_args: dict[str, Any] = field(default_factory=dict)  # fixed for every cell
    limit: float | None = None
    batch_size: int | str = 1
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
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: {_yaml_problem(err)}") from None
        valid = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(raw, dict) or "tasks" not in raw:
            raise ValueError(f"{path}: a sweep config is a mapping with at least `tasks`")
        if unknown := sorted(set(raw) - valid):
            raise ValueError(f"{path}: unknown keys {unknown}; valid: {sorted(valid)}")
        try:
            check_fields(raw)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
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


def _yaml_problem(err: Exception) -> str:
    """A YAML error in one line, with where it is in the file."""
    mark = getattr(err, "problem_mark", None)
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"it is not valid YAML: {problem}{where}; fix the file"


def _defaults(run: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of an instrument function."""
    params = inspect.signature(run).parameters.values()
    return {p.name: p.default for p in params if p.default is not p.empty}


def _invalid(key: str, value: Any, what: str) -> ValueError:
    return ValueError(f"{key}={value!r} is invalid: it must be {what}")


def _check_kinds(raw: Mapping[str, Any]) -> None:
    """The config's values that are mappings, names or folders are of those kinds."""
    for key in ("grid", "model_args"):
        if not isinstance(raw.get(key, {}), dict):
            raise _invalid(key, raw[key], "a mapping of model_args to values")
    for key, values in raw.get("grid", {}).items():
        if not isinstance(values, list) or not values:
            raise _invalid(f"grid.{key}", values, "a non-empty list of values")
    if not isinstance(raw.get("device", ""), str):
        raise _invalid("device", raw["device"], "a torch device name such as cpu or cuda")
    if not isinstance(raw.get("gen_kwargs"), str | dict | None):
        raise _invalid("gen_kwargs", raw["gen_kwargs"], "lm-eval's gen_kwargs, e.g. max_gen_toks=64")
    include = raw.get("include_path") or []
    if not isinstance(include, str) and not (
        isinstance(include, list) and all(isinstance(folder, str) for folder in include)
    ):
        raise _invalid("include_path", include, "a folder or a list of folders")


def check_fields(raw: Mapping[str, Any]) -> None:
    """The types and ranges of a config's values and of its instruments' options, before anything
    runs (ValueError: one line naming the key, the value and what is valid)."""
    auto = isinstance(raw.get("batch_size"), str) and raw["batch_size"].startswith("auto")
    check_all(FIELDS, {k: v for k, v in raw.items() if not (auto and k == "batch_size")})
    _check_kinds(raw)
    for name, (run, check) in instruments().items():
        options = raw.get(name)
        if options is None:
            continue
        if not isinstance(options, dict):
            raise _invalid(name, options, "a mapping of its options")
        valid = set(inspect.signature(run).parameters) - set(FILLED)
        if unknown := sorted(set(options) - valid):
            raise ValueError(
                f"{name}: unknown options {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        check({**_defaults(run), **options}, lambda key, name=name: f"{name}.{key}")


def validate(cfg: SweepConfig, task_manager: Any) -> None:
    """Check the whole config before anything runs: its values' types and ranges, the device,
    every task resolvable, every cell's model_args accepted by ``--model ffnskip`` (and, for
    fixed-depth methods, by each model's depth, read last: an embedded model's first use
    dequantises it). Raises ValueError with one line naming the problem and the valid choices."""
    import difflib

    from transformers import AutoConfig

    from ..harness.checkpoints import resolve, torch_device
    from ..harness.lm import valid_args
    from ..skip.settings import SkipPolicy, setting_names

    check_fields(dataclasses.asdict(cfg))
    torch_device(cfg.device)
    known = set(task_manager.all_tasks)
    for task in cfg.tasks:
        if task not in known:
            near = difflib.get_close_matches(task, sorted(known), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else "; add its folder to include_path"
            raise ValueError(f"tasks: {task!r} is not a task lm-eval knows{hint}")
    policies = {}
    for cell in cells(cfg):
        try:
            method = str(cell.model_args.get("method", "ffnskip"))
            if unknown := sorted(set(cell.model_args) - valid_args(method)):
                valid = ", ".join(sorted(valid_args(method)))
                raise ValueError(f"unknown model_args {', '.join(unknown)}; valid: {valid}")
            settings = setting_names(method)
            policies[cell.name] = SkipPolicy.from_args(
                {k: v for k, v in cell.model_args.items() if k in settings}
            )
        except ValueError as err:
            raise ValueError(f"cell {cell.name}: {err}") from err
    depths = [AutoConfig.from_pretrained(resolve(m)).num_hidden_layers for m in cfg.models]
    for name, policy in policies.items():
        if "levels" in policy.rule.needs:  # its limits need the model's calibration
            continue
        try:
            for n_layers in depths:
                policy.layout(n_layers)
        except ValueError as err:
            raise ValueError(f"cell {name}: {err}") from err


@dataclass(frozen=True)
class Cell:
    name: str
    model_args: dict[str, Any]


def cells(cfg: SweepConfig) -> list[Cell]:
    """The dense cell, then method x target x grid points, each with its full model_args."""
    out = [Cell(DENSE, {**cfg.model_args, "method": DENSE})]
    keys = sorted(cfg.grid)
    for method, target, *point in itertools.product(cfg.methods, cfg.targets, *(cfg.grid[k] for k in keys)):
        extra = dict(zip(keys, point, strict=True))
        name = "-".join([config_name(method, target), *(f"{k}{v}" for k, v in extra.items())])
        out.append(Cell(name, {**cfg.model_args, "method": method, "target_skip": target, **extra}))
    return out


def _write_json(path: Path, payload: Any) -> None:
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
    _write_json(folder / "results.json", {**out, "sweep_cell": record, "versions": versions()})


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
    _write_json(out / "summary.json", {"config": dataclasses.asdict(cfg), "rows": rows, "cells_run": ran})
    return rows


def _rows(cfg: SweepConfig, model: str, root: Path) -> list[dict[str, Any]]:
    """The model's summary rows; a skip cell's agreement with dense is measured (again) unless it
    was measured against the dense cell's present run."""
    from transformers import AutoTokenizer

    from ..harness.checkpoints import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve(model))
    dense_run = json.loads((root / DENSE / "results.json").read_text())["sweep_cell"]["run"]
    rows = []
    for cell in cells(cfg):
        path = root / cell.name / "results.json"
        results = json.loads(path.read_text())
        if cell.name != DENSE and results.get("agreement_dense_run") != dense_run:
            results["agreement"] = agreement(root / DENSE, root / cell.name, tokenizer)
            results["agreement_dense_run"] = dense_run
            _write_json(path, results)
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


Instrument = tuple[Callable[..., dict[str, Any]], Callable[..., None]]


def instruments() -> dict[str, Instrument]:
    """The per-model measurements a config can ask for, by its key: (the library function, taking
    the model, the device and the config's options as keyword arguments and returning the JSON
    written beside the cells; the check of those options, ``check_options(values, spell)``)."""
    from ..harness import calibrate
    from . import bench, fidelity, flops

    return {
        "flops": (flops.run_flops, flops.check_options),
        "bench": (functools.partial(bench.run_bench, progress=False), bench.check_options),
        "calibrate": (calibrate.run_calibrate, calibrate.check_options),
        "fidelity": (fidelity.run_fidelity, fidelity.check_options),
    }


def _extras(cfg: SweepConfig, model: str, root: Path, log: Callable[[str], None]) -> int:
    """FLOPs, decode speed, calibration and fidelity per model, each unless its JSON holds results
    of the same model, device, options and versions (``log`` says why one is made again); returns
    how many were reused."""
    from ..skip.provenance import versions

    reused = 0
    for name, (run, _) in instruments().items():
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
        _write_json(target, {**run(pretrained=model, device=cfg.device, **options), "sweep": settings})
    return reused
