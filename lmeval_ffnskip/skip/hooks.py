"""What an engine is (``Engine``), and the hooks and ``forward`` replacements it puts on a stock
model, undone together."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from .stats import RowLedger

if TYPE_CHECKING:
    from .adapters import FFNSite
    from .layout import LayerLayout
    from .settings import SkipPolicy
    from .stats import SkipStats
    from .steps import StepCounter

_OWNER = "_ffnskip_engine"  # the attribute that marks a decoder stack's attached engine


class Engine(Protocol):
    """What drives a rule on one model (``engine.SkipEngine`` for FFN rules,
    ``layerskip.LayerSkipEngine`` for layer rules), as ``attach`` hands it out."""

    policy: SkipPolicy
    layout: LayerLayout
    sites: list[FFNSite]  # the decoder's layers, in order
    stats: SkipStats
    history: list[torch.Tensor] | None  # per pass, [batch, length, n_layers] skipped (record=True)
    ledger: RowLedger | None  # per-row counts of a batched generation, while a caller keeps one
    steps: StepCounter

    def install(self) -> None:
        """Hook the model in place."""

    def remove(self) -> None:
        """Undo ``install``."""


@contextmanager
def installed(engine: Engine) -> Iterator[Engine]:
    """``engine``'s hooks on its model for the block, and off after it, whatever happens."""
    engine.install()
    try:
        yield engine
    finally:
        engine.remove()


@contextmanager
def rows_counted(engine: Engine) -> Iterator[RowLedger]:
    """Per-row counts of the block's passes beside ``engine``'s totals, so that a batched
    generation can take back the steps a row made after its request ended."""
    engine.ledger = RowLedger(len(engine.sites))
    try:
        yield engine.ledger
    finally:
        engine.ledger = None


def attached_engine(model: nn.Module) -> Engine | None:
    """The skip engine installed on ``model`` (a causal LM or its decoder stack), if any."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    return vars(decoder).get(_OWNER)


def unchanged(x: torch.Tensor) -> torch.Tensor:
    """The identity, where a block has no module to stand for (no input norm)."""
    return x


class Patches:
    """What an engine changed on a model: hook handles and instance-level ``forward`` overrides
    (the class's ``forward`` is never touched, so removing the override restores the stock module)."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._patched: list[nn.Module] = []
        self._owned: list[nn.Module] = []

    def own(self, decoder: nn.Module, engine: Engine) -> None:
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
