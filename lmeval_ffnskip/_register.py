"""Make ``--model ffnskip`` and our tasks known to the plain lm-eval CLI (run from the .pth file).

lm-eval 0.4.13 reads no entry points for models, and ``get_model`` only imports its own
models while the registry is empty, so the built-ins are imported before our lazy name is
added. Our task folder joins every ``TaskManager`` that includes the defaults; that module
is heavy to import, so it is patched only when lm-eval itself imports it. Errors are
swallowed: a broken lm-eval must not break every Python start.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

NAME, TARGET = "ffnskip", "lmeval_ffnskip.harness.lm:FFNSkipLM"
MANAGER = "lm_eval.tasks.manager"


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
        if include_defaults:
            from .taskdata.data import tasks_dir

            extra = [] if include_path is None else include_path
            extra = list(extra) if isinstance(extra, list | tuple) else [extra]
            include_path = [str(tasks_dir()), *extra]  # user paths come last and may override
        original(self, *args, include_path=include_path, include_defaults=include_defaults, **kwargs)

    __init__._ffnskip = True
    cls.__init__ = __init__


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
