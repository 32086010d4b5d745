"""The FFN blocks of a stock HF decoder as one compiled decoding step computes them.

``BlockPatches`` replaces (per instance, like the eager engine) the ``forward`` of the FFN
block's modules in the layers a device form touches. While a step runs (``StepContext.active``)
the block is computed where it ends (``mlp``, or Gemma's output norm) from the residual stream
``h`` kept at its input norm: in a layer the form may skip, by the op ``ffnskip::gated_mlp``
(``ffn_op.py``), which reads the rows' skip flags on the device (a block every row skips reads no
weights; rows that skip where others run get zeros); in a layer it only checks, by the stock
modules. No branch is left in the step, so on CUDA it is one CUDA graph. Where the form checks,
cos(h, h + block) is measured after the block: fp32 dot products, the cosine from them in float64
(the eager engine's ``_measure`` takes the same products from a Gram matrix; the sums' order
differs, by about 1e-7 in the cosine). Outside a step every patched module runs its stock
``forward`` (the eager prefill).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.activations import ACT2FN

from .adapters import ARCHITECTURES, FFNSite, family
from .ffn_op import ACTIVATIONS
from .hooks import Patches, unchanged
from .rule import DeviceForm, State

Forward = Callable[[torch.Tensor], torch.Tensor]
BlockFFN = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]  # (h, rows skipping) -> block


class StepContext:
    """What the step being traced has decided so far: the form's state and each layer's
    skipping rows, in dicts made once and changed in place (dynamo keeps item stores on an
    object it reaches through a closure; attribute stores between the patched modules it has
    lost). ``active`` is set by the host around each compiled call."""

    def __init__(self, form: DeviceForm, n_layers: int) -> None:
        self.form, self.n_layers = form, n_layers
        self.active = False
        self.state: State = {}
        self.skipped: dict[int, torch.Tensor] = {}

    def begin(self, eligible: torch.Tensor, inputs: dict[str, torch.Tensor]) -> None:
        """Start one step's decisions, from ``eligible`` [batch] and the form's host ``inputs``."""
        self.skipped.clear()
        self.state.clear()
        self.state.update(self.form.start(eligible, inputs))

    def outcome(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[batch, n_layers] skipped FFN blocks and [batch] eligible rows that never fired."""
        none = torch.zeros_like(self.state["eligible"])
        mask = torch.stack([self.skipped.get(i, none) for i in range(self.n_layers)], dim=1)
        never = self.form.never(dict(self.state))
        self.state.clear()
        self.skipped.clear()
        return mask, never

    def block(self, site: FFNSite, ffn: BlockFFN, h: torch.Tensor) -> torch.Tensor:
        """Layer ``site``'s FFN block of ``h`` (the layer adds it times ``site.scale``), skipped per
        row as the form decides (``ffn(h, skip)``: the block, ``skip`` None where the layer is
        never skipped)."""
        form, layer = self.form, site.index
        skip = None
        if layer in form.skippable:
            skip, state = form.enter(layer, dict(self.state))
            self.state.update(state)
            self.skipped[layer] = skip
        out = ffn(h, skip)
        if form.checks_at(layer):
            added = out if site.scale == 1.0 else out * site.scale
            self.state.update(form.measured(layer, dict(self.state), cosines(h, added)))
        return out


def cosines(h: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """[batch] cos(h, h + block) of one-token rows: the fp32 dot products (h.h, h.block,
    block.block), one fused reduction, and the cosine from them in float64."""
    x, y = h.reshape(h.shape[0], -1).float(), block.reshape(h.shape[0], -1).float()
    hh, hb, bb = ((x * x).sum(-1).double(), (x * y).sum(-1).double(), (y * y).sum(-1).double())
    norms = (hh * (hh + 2 * hb + bb).clamp(min=0)).sqrt()
    return torch.where(norms > 0, (hh + hb) / norms.clamp(min=torch.finfo(torch.float64).tiny), 0.0)


def op_refusal(config: PretrainedConfig) -> str | None:
    """Why the FFN op cannot run the blocks of a model of ``config`` (read before any weights
    load: its family's layer and block, bias and activation), or None."""
    model_type = config.model_type
    found = family(config) if model_type in ARCHITECTURES else None
    if found is not None and found.parallel is not None:
        return (
            f"{model_type}: its layers run attention and the FFN block in parallel; the compiled decoding "
            "path keeps h at the block's input and measures cos(h, h + block), not the parallel layer's "
            "cos(h + attention, h + attention + block); drop compile / --compile"
        )
    if found is None or not found.gated_mlp:
        return (
            f"{model_type}: its FFN block is not a gated MLP of separate gate_proj / up_proj / down_proj "
            "linears, which the compiled decoding path's FFN op runs; drop compile / --compile"
        )
    if getattr(config, "mlp_bias", False):
        return f"{model_type}: mlp_bias=True, and the compiled decoding path's FFN op takes no biases"
    name = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    if name not in ACTIVATIONS:
        return (
            f"{model_type}: activation {name!r} is not one the compiled decoding path's FFN op has "
            f"({', '.join(sorted(ACTIVATIONS))}); drop compile / --compile"
        )
    return None


def gated_activation(site: FFNSite) -> str:
    """The op's activation for ``site``'s MLP; NotImplementedError naming what the op cannot run
    there (it takes the bias-free ``gate_proj`` / ``up_proj`` / ``down_proj`` linears of Llama- and
    Gemma-style MLPs, with one of ``ACTIVATIONS``)."""
    for name in ("gate_proj", "up_proj", "down_proj"):
        linear = getattr(site.mlp, name, None)
        if not isinstance(linear, nn.Linear) or linear.bias is not None:
            raise NotImplementedError(
                f"layer {site.index}'s mlp has no bias-free nn.Linear {name}: the compiled decoding "
                "path's FFN op cannot run it; drop compile / --compile"
            )
    act = getattr(site.mlp, "act_fn", None)
    for name, activation in ACTIVATIONS.items():
        if name in ACT2FN and type(act) is type(ACT2FN[name]):
            return activation
    raise NotImplementedError(
        f"layer {site.index}'s mlp activation {type(act).__name__} is not one the compiled decoding "
        f"path's FFN op has ({', '.join(sorted(ACTIVATIONS))}); drop compile / --compile"
    )


class BlockPatches:
    """The patched ``forward``s of the FFN blocks a form touches, made once (so that compiled
    code traced with them stays valid) and installed only while the compiled path runs. They are
    closures, one set per layer: dynamo told ``functools.partial`` forwards of different layers
    apart wrongly (every layer traced as the first one)."""

    def __init__(self, ctx: StepContext, sites: list[FFNSite]) -> None:
        self.forwards: list[tuple[nn.Module, Forward]] = []
        for site in (sites[i] for i in ctx.form.layers):
            activation = gated_activation(site) if site.index in ctx.form.skippable else None
            self.forwards += _block_forwards(ctx, site, activation)
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
    ctx: StepContext, site: FFNSite, activation: str | None
) -> list[tuple[nn.Module, Forward]]:
    """The replacement ``forward``s of one layer's FFN block modules: in a step the input norm
    passes ``h`` on unnormed, so does Gemma's ``mlp``, and the block's last module returns
    ``ctx.block`` of it (by the op with ``activation`` where the layer may be skipped); outside a
    step each runs its stock ``forward``."""
    in_norm = unchanged if site.in_norm is None else _stock(site.in_norm)
    mlp, out_norm = _stock(site.mlp), site.out_norm and _stock(site.out_norm)
    last = site.out_norm or site.mlp
    gate, up, down = (getattr(site.mlp, name, None) for name in ("gate_proj", "up_proj", "down_proj"))

    def ffn(h: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = in_norm(h)
        if skip is None:
            y = mlp(x)
        else:
            y = torch.ops.ffnskip.gated_mlp(x, skip, gate.weight, up.weight, down.weight, activation)
        return y if out_norm is None else out_norm(y)  # a norm of zeros is zeros: skipped rows stay 0

    def keep_input(h: torch.Tensor) -> torch.Tensor:
        return h if ctx.active else in_norm(h)  # in a step: the block is computed where it ends

    def pass_through(x: torch.Tensor) -> torch.Tensor:
        return x if ctx.active else mlp(x)

    def end(x: torch.Tensor) -> torch.Tensor:
        return ctx.block(site, ffn, x) if ctx.active else _stock(last)(x)

    forwards: list[tuple[nn.Module, Forward]] = []
    if site.in_norm is not None:
        forwards.append((site.in_norm, keep_input))
    if last is not site.mlp:
        forwards.append((site.mlp, pass_through))
    return [*forwards, (last, end)]


def _stock(module: nn.Module) -> Callable[..., torch.Tensor]:
    """``module``'s class ``forward``, bound (whatever an attached engine put on the instance)."""
    return type(module).forward.__get__(module)
