"""The FFN blocks of a stock HF decoder as one compiled decoding step sees them.

``BlockPatches`` replaces (per instance, like the eager engine) the ``forward`` of the FFN
block's modules in the layers a device form touches. While a step runs (``StepContext.run``)
the block is computed where it ends (``mlp``, or Gemma's output norm) from the residual stream
``h`` kept at its input norm, inside ``torch.cond`` on whether any row runs it: a block that
every row skips does no FFN work (the false branch returns zeros). Where only some rows skip,
the block runs for every row and the skipped rows' outputs are zeroed (masked compute: the
weights are read once either way; ``skip_ratio_pass`` counts the blocks every row skipped).
After a block the form may measure cos(h, h + block), inside the branch that ran it: fp32 dot
products, the cosine from them in float64 (the eager engine's ``_measure`` takes the same
products from a Gram matrix; the sums' order differs, by about 1e-7 in the cosine).
A step traced for a ``plans.Plan`` has no branch: the blocks every row skips are left out, those
some rows skip are masked, and the similarities at the plan's layers are returned.
Outside a step every patched module runs its stock ``forward`` (the eager prefill).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from .adapters import FFNSite
from .device import DeviceForm, State
from .hooks import Patches
from .plans import Plan


class StepContext:
    """What the step being traced has decided so far: the form's state and each layer's
    skipping rows, in two dicts made once and changed in place (dynamo lost attribute stores on
    this object between the patched modules; item stores it keeps). ``active`` is set by the
    host around each compiled call."""

    def __init__(self, form: DeviceForm, n_layers: int) -> None:
        self.form, self.n_layers = form, n_layers
        self.active = False
        self.plan: Plan | None = None  # set by the host around a planned step's call
        self.state: State = {}
        self.skipped: dict[int, torch.Tensor] = {}
        self.cosines: dict[int, torch.Tensor] = {}
        self.checks = tuple(layer for layer in form.layers if form.checks_at(layer))

    def begin(self, eligible: torch.Tensor, inputs: dict[str, torch.Tensor]) -> None:
        """Start one step's decisions, from ``eligible`` [batch] and the form's host ``inputs``."""
        self.skipped.clear()
        self.cosines.clear()
        self.state.clear()
        self.state.update(self.form.start(eligible, inputs))

    def outcome(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[batch, n_layers] skipped FFN blocks, [batch] eligible rows that never fired, and
        [batch, len(checks)] the similarities at the form's checked layers."""
        none = torch.zeros_like(self.state["eligible"])
        mask = torch.stack([self.skipped.get(i, none) for i in range(self.n_layers)], dim=1)
        never = self.form.never(dict(self.state))
        cosines = self._taken(self.checks, none)
        self.state.clear()
        self.skipped.clear()
        return mask, never, cosines

    def begin_plan(self, rows: torch.Tensor) -> None:
        """Start a planned step; ``rows`` [batch, n_layers]: which rows skip which blocks."""
        self.cosines.clear()
        self.state["rows"] = rows

    def plan_outcome(self, like: torch.Tensor) -> torch.Tensor:
        """[batch, len(plan.measured)] the similarities at the plan's layers."""
        assert self.plan is not None
        self.state.clear()
        return self._taken(self.plan.measured, like)

    def _taken(self, layers: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        cosines = [self.cosines[layer] for layer in layers]
        self.cosines.clear()
        if not cosines:
            return torch.zeros(like.shape[0], 0, dtype=torch.float64, device=like.device)
        return torch.stack(cosines, dim=1)

    def block(
        self, site: FFNSite, full: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor
    ) -> torch.Tensor:
        """What layer ``site``'s FFN block adds to ``h``, skipped per row as the form (or plan) decides."""
        if self.plan is not None:
            return self._planned(self.plan, site.index, full, h)
        form, layer = self.form, site.index
        measure = form.checks_at(layer)
        if layer in form.skippable:
            skip, state = form.enter(layer, dict(self.state))
            self.state.update(state)
            self.skipped[layer] = skip
            branches = _running(full, measure, masked=h.shape[0] > 1), _skipping(measure)
            result = torch.cond(~skip.all(), *branches, (h, skip))
            out, cos = result if measure else (result, None)
        else:
            out = full(h)
            cos = cosines(h, out) if measure else None
        if measure:
            self.state.update(form.measured(layer, dict(self.state), cos))
            self.cosines[layer] = cos
        return out

    def _planned(
        self, plan: Plan, layer: int, full: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor
    ) -> torch.Tensor:
        """Layer ``layer``'s block in a step traced for ``plan`` (no branch)."""
        if layer in plan.gone:
            out = torch.zeros_like(h)
            if layer in plan.measured:
                self.cosines[layer] = torch.ones(h.shape[0], dtype=torch.float64, device=h.device)
            return out
        out = full(h)
        if layer in plan.masked:
            out = torch.where(self.state["rows"][:, layer].view(-1, *[1] * (out.dim() - 1)), 0, out)
        if layer in plan.measured:
            self.cosines[layer] = cosines(h, out)
        return out


def _running(
    full: Callable[[torch.Tensor], torch.Tensor], measure: bool, masked: bool
) -> Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """The branch where some row runs the block: every row computes it, skipping rows' outputs
    zeroed (``masked``: more than one row), with the similarities where the form measures."""

    def run(h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = full(h)
        if masked:
            out = torch.where(skip.view(-1, *[1] * (out.dim() - 1)), 0, out)
        return (out, cosines(h, out)) if measure else out

    return run


def _skipping(measure: bool) -> Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """The branch where every row skips: no FFN work, zeros added (similarity 1 where measured)."""

    def skip_all(h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = torch.zeros_like(h)
        return (out, torch.ones(h.shape[0], dtype=torch.float64, device=h.device)) if measure else out

    return skip_all


def cosines(h: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """[batch] cos(h, h + block) of one-token rows: the fp32 dot products (h.h, h.block,
    block.block), one fused reduction, and the cosine from them in float64."""
    x, y = h.reshape(h.shape[0], -1).float(), block.reshape(h.shape[0], -1).float()
    hh, hb, bb = ((x * x).sum(-1).double(), (x * y).sum(-1).double(), (y * y).sum(-1).double())
    norms = (hh * (hh + 2 * hb + bb).clamp(min=0)).sqrt()
    return torch.where(norms > 0, (hh + hb) / norms.clamp(min=torch.finfo(torch.float64).tiny), 0.0)


class BlockPatches:
    """The patched ``forward``s of the FFN blocks a form touches, made once (so that compiled
    code traced with them stays valid) and installed only while the compiled path runs. They are
    closures, one set per layer: dynamo told ``functools.partial`` forwards of different layers
    apart wrongly (every layer traced as the first one)."""

    def __init__(self, ctx: StepContext, sites: list[FFNSite]) -> None:
        self.forwards: list[tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]] = []
        for site in (sites[i] for i in ctx.form.layers):
            self.forwards += _block_forwards(ctx, site)
        self._patches = Patches()

    @contextmanager
    def installed(self) -> Iterator[None]:
        for module, forward in self.forwards:
            self._patches.patch(module, forward)
        try:
            yield
        finally:
            self._patches.remove()


def _block_forwards(
    ctx: StepContext, site: FFNSite
) -> list[tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]]:
    """The replacement ``forward``s of one layer's FFN block modules: in a step the input norm
    passes ``h`` on unnormed, so does Gemma's ``mlp``, and the block's last module returns
    ``ctx.block`` of it; outside a step each runs its stock ``forward``."""
    in_norm, mlp, out_norm = _stock(site.in_norm), _stock(site.mlp), site.out_norm and _stock(site.out_norm)
    last = site.out_norm or site.mlp

    def full(h: torch.Tensor) -> torch.Tensor:
        y = mlp(in_norm(h))
        return y if out_norm is None else out_norm(y)

    def keep_input(h: torch.Tensor) -> torch.Tensor:
        return h if ctx.active else in_norm(h)  # in a step: the block is computed where it ends

    def pass_through(x: torch.Tensor) -> torch.Tensor:
        return x if ctx.active else mlp(x)

    def end(x: torch.Tensor) -> torch.Tensor:
        return ctx.block(site, full, x) if ctx.active else _stock(last)(x)

    forwards = [(site.in_norm, keep_input)]
    if last is not site.mlp:
        forwards.append((site.mlp, pass_through))
    return [*forwards, (last, end)]


def _stock(module: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """``module``'s class ``forward``, bound (whatever an attached engine put on the instance)."""
    return type(module).forward.__get__(module)
