"""Hooks and ``forward`` replacements put on a stock model by an engine, undone together."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_OWNER = "_ffnskip_engine"  # the attribute that marks a decoder stack's attached engine


def attached_engine(model: nn.Module) -> object | None:
    """The skip engine installed on ``model`` (a causal LM or its decoder stack), if any."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    return vars(decoder).get(_OWNER)


class Patches:
    """What an engine changed on a model: hook handles and instance-level ``forward`` overrides
    (the class's ``forward`` is never touched, so removing the override restores the stock module)."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._patched: list[nn.Module] = []
        self._owned: list[nn.Module] = []

    def own(self, decoder: nn.Module, engine: object) -> None:
        """Mark ``decoder`` as driven by ``engine`` (see ``attached_engine``)."""
        if _OWNER in vars(decoder):
            raise RuntimeError("this model already has a skip engine attached; detach it first")
        vars(decoder)[_OWNER] = engine
        self._owned.append(decoder)

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
        for decoder in self._owned:
            vars(decoder).pop(_OWNER, None)
        self._owned.clear()
