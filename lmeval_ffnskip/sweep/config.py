"""A sweep config (``SweepConfig``, read from YAML), its cells, and its checks, run whole before any
cell does: each value's type and range, the instruments' options (``instruments/options.py``),
the tasks, and every cell's model_args as ``--model ffnskip`` takes them."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..inputs.checkpoints import DEFAULT_MODEL
from ..inputs.options import Methods, Number, Words, check_all
from ..instruments.options import BenchOptions, CalibrateOptions, FidelityOptions, FlopsOptions
from ..skip.naming import DENSE, config_name
from ..skip.policy import PolicyFields

SHIPPED = Path(__file__).resolve().parent / "configs"
# the types and ranges of a config's own values (the instruments' options have their own checks)
FIELDS = {
    "tasks": Words(empty=False),
    "models": Words(empty=False),
    "methods": Methods(empty=True),
    "targets": Number(float, 0, 1, many=True),
    "limit": Number(float, 0, open=True, optional=True),  # below 1: a fraction of each task
    "batch_size": Number(int, 1),  # or lm-eval's "auto"
}
# the per-model measurements a config can ask for, by its key, and their options
INSTRUMENTS = {
    "flops": FlopsOptions,
    "bench": BenchOptions,
    "calibrate": CalibrateOptions,
    "fidelity": FidelityOptions,
}


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: every model runs a ``dense`` cell and one cell per method x target x grid point."""

    tasks: list[str]
    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL])
    methods: list[str] = field(default_factory=lambda: ["ffnskip"])
    targets: list[float] = field(default_factory=lambda: [PolicyFields.target_skip])
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
    for name in INSTRUMENTS:
        options = raw.get(name)
        if options is None:
            continue
        if not isinstance(options, dict):
            raise _invalid(name, options, "a mapping of its options")
        instrument_options(name, options).check(lambda key, name=name: f"{name}.{key}")


def instrument_options(
    name: str, options: Mapping[str, Any], model: str = DEFAULT_MODEL, device: str = "cpu"
) -> Any:
    """The options of the instrument ``name`` from a config's mapping, for ``model`` on ``device``
    (the sweep fills these two: ValueError naming any other key its options do not have)."""
    kind = INSTRUMENTS[name]
    valid = sorted(f.name for f in dataclasses.fields(kind) if f.name not in ("pretrained", "device"))
    if unknown := sorted(set(options) - set(valid)):
        raise ValueError(f"{name}: unknown options {', '.join(unknown)}; valid: {', '.join(valid)}")
    return kind(pretrained=model, device=device, **options)  # values as written: checks name them so


def validate(cfg: SweepConfig, task_manager: Any) -> None:
    """Check the whole config before anything runs: its values' types and ranges, the device,
    every task resolvable, every cell's model_args accepted by ``--model ffnskip`` (and, for
    fixed-depth methods, by each model's depth, read last: an embedded model's first use
    dequantises it). Raises ValueError with one line naming the problem and the valid choices."""
    import difflib

    from transformers import AutoConfig

    from ..harness.lm import policy_of
    from ..inputs.checkpoints import resolve, torch_device

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
            policies[cell.name] = policy_of(cell.model_args)
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
