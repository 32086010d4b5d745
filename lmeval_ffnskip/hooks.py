"""Hooks and ``forward`` replacements put on a stock model by an engine, undone together."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Patches:
    """What an engine changed on a model: hook handles and instance-level ``forward`` overrides
    (the class's ``forward`` is never touched, so removing the override restores the stock module)."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._patched: list[nn.Module] = []

    def hook(self, handle: torch.utils.hooks.RemovableHandle) -> None:
        self._handles.append(handle)

    def patch(self, module: nn.Module, forward: Callable[..., torch.Tensor]) -> None:
        module.forward = forward
        self._patched.append(module)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._patched:
            vars(module).pop("forward", None)
        self._patched.clear()
