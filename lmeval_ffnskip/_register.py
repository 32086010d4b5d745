"""Make ``--model ffnskip`` and our tasks known to the plain lm-eval CLI (run from the .pth file).

lm-eval 0.4.13 reads no entry points for models, and ``get_model`` only imports its own
models while the registry is empty, so the built-ins are imported before our lazy name is
added. Our task folders join every ``TaskManager`` that includes the defaults; that module
is heavy to import, so it is patched only when lm-eval itself imports it. Errors are
swallowed: a broken lm-eval must not break every Python start.

Our tasks with new names are always added. Our offline copies of built-ins (``mmlu``,
``wikitext``: same names, data read from the data directory) are added only in offline data
mode, with ``FFNSKIP_DATA_DIR`` set; without it lm-eval's own tasks of those names stay.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

NAME, TARGET = "ffnskip", "lmeval_ffnskip.harness.lm:FFNSkipLM"
MANAGER = "lm_eval.tasks.manager"
INDEX_LOGGER = "lm_eval.tasks._index"
TASK_LOGGER = "lm_eval.api.task"
# our task folders whose tasks carry the names of lm-eval built-ins (offline data mode only)
REPLACES_BUILTINS = frozenset({"mmlu", "wikitext"})


def register() -> None:
    """Register the lazy ``ffnskip`` model name and the task hook (idempotent)."""
    try:
        import lm_eval.models  # noqa: F401  (fills the registry with the built-ins first)
        from lm_eval.api.registry import model_registry
    except Exception:
        return
    if NAME not in model_registry:
        model_registry.register(NAME, target=TARGET)
    if MANAGER in sys.modules:
        _add_our_tasks(sys.modules[MANAGER])
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def _add_our_tasks(module: ModuleType) -> None:
    cls = module.TaskManager
    if getattr(cls.__init__, "_ffnskip", False):
        return
    original = cls.__init__

    @functools.wraps(original)
    def __init__(
        self: Any, *args: Any, include_path: Any = None, include_defaults: bool = True, **kwargs: Any
    ) -> None:
        if not include_defaults:
            original(self, *args, include_path=include_path, include_defaults=False, **kwargs)
            return
        from .taskdata.data import ENV, tasks_dir

        offline = bool(os.environ.get(ENV))
        ours = [d for d in sorted(tasks_dir().iterdir()) if d.is_dir()]
        ours = [d for d in ours if offline or d.name not in REPLACES_BUILTINS]
        extra = [] if include_path is None else include_path
        extra = list(extra) if isinstance(extra, list | tuple) else [extra]
        with _quiet_replacements([d for d in ours if d.name in REPLACES_BUILTINS]):
            # user paths come last and may override ours
            original(self, *args, include_path=[*map(str, ours), *extra], include_defaults=True, **kwargs)
        root = tasks_dir()
        _DATA_HINT.tasks |= {
            name for name, e in self.task_index.items() if e.yaml_path and e.yaml_path.is_relative_to(root)
        }

    __init__._ffnskip = True
    cls.__init__ = __init__


@contextlib.contextmanager
def _quiet_replacements(folders: list[Path]) -> Iterator[None]:
    """While the index is built, silence the override records of our offline copies in ``folders``."""
    if not folders:
        yield
        return
    index_log, quiet = logging.getLogger(INDEX_LOGGER), _OurReplacements(folders)
    index_log.addFilter(quiet)
    try:
        yield
    finally:
        index_log.removeFilter(quiet)


class _OurReplacements(logging.Filter):
    """Drops the task index's "Task ... overrides existing task" records for the built-ins that
    our offline copies in ``folders`` replace on purpose (tasks, groups, tags); others still log."""

    def __init__(self, folders: list[Path]) -> None:
        from lm_eval.tasks._index import Kind, TaskIndex

        super().__init__()
        self.folders = folders
        self.tags = {name for name, e in TaskIndex.build(folders).items() if e.kind is Kind.TAG}

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if "overrides existing task" not in str(record.msg) or len(args) != 3:
            return True
        name, path = args[0], args[1]  # the name and the overriding YAML (None for a tag)
        if path is None:
            return name not in self.tags
        return not any(Path(str(path)).is_relative_to(f) for f in self.folders)


class _OurDataHint(logging.Filter):
    """Drops lm-eval's "Custom kwargs can be passed to `--metadata`" warning for our tasks: it is
    logged for every task that loads its own data (ours all do, from the data directory) and
    names options none of them reads."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        name, _, rest = message.partition(": ")
        return not (rest.startswith("Custom kwargs can be passed to `--metadata`") and name in self.tasks)


_DATA_HINT = _OurDataHint()
logging.getLogger(TASK_LOGGER).addFilter(_DATA_HINT)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs ``_add_our_tasks`` right after lm-eval imports its task manager."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if name != MANAGER:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            _add_our_tasks(module)

        spec.loader.exec_module = exec_and_patch
        return spec


register()
