"""How the compiled decoding path's steps are compiled, and when they must be compiled again.

Each step is compiled whole (``torch.compile(fullgraph=True, dynamic=False)``, inductor) as its
own code object, without dynamo's guards on the model's modules: of a planned step's ~8,500
guard entries on the thin Llama-2-7B shape, ~7,000 check the modules' attributes, parameters and
hooks on every call, 0.8 ms of a 2.6 ms step (``guard_filter_fn``, PyTorch's "reducing guard
overhead" knob). What those guards would have caught is compared once per generation instead
(``ModelState``). Inductor's own per-call layout checks stay (``size_asserts``: about 400 calls a
step on that shape, most of them on inputs that guards or ``ModelState`` cover): the same flag
checks the layout of each fallback kernel's output, which a torch release that mispredicts it
would otherwise turn into wrong values instead of an error. On CUDA a step may be captured as a
CUDA graph (whose replays run no checks); inductor is told to raise where it would skip the
capture, and ``graph_refusal`` reads its reason from what reaches the caller.
"""

from __future__ import annotations

import itertools
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# a step captured as a CUDA graph (what ``mode="reduce-overhead"`` sets), a refused capture raised
GRAPH_OPTIONS = {"triton.cudagraphs": True, "triton.cudagraph_or_error": True}
# around a graph's call: a capture refused when called (a mutated input, re-recordings) raises too
REFUSALS_RAISE = {"triton.cudagraph_or_error": True}
GUARD_FILTER = torch.compiler.skip_guard_on_all_nn_modules_unsafe
_PLAIN = (bool, int, float, str, type(None))


def compiled_step(fn: types.FunctionType, graphs: bool = False) -> Callable[..., object]:
    """``fn`` compiled whole, as its own code object, without guards on the model's modules
    (``graphs``: captured as a CUDA graph)."""
    # a new dict each call: torch.compile pops ``guard_filter_fn`` from the one it is given
    options = {"guard_filter_fn": GUARD_FILTER, **(GRAPH_OPTIONS if graphs else {})}
    return torch.compile(own_copy(fn), fullgraph=True, dynamic=False, options=options)


def own_copy(fn: types.FunctionType) -> types.FunctionType:
    """``fn`` with its own code object: dynamo keeps compiled code per code object, up to
    ``recompile_limit`` entries, and each decoder's guards (its context and form) differ."""
    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


def graph_refusal(error: BaseException | None) -> str | None:
    """The first line of inductor's reason for not capturing a CUDA graph, where ``error`` is
    that refusal (raised under ``GRAPH_OPTIONS``), as is or wrapped (dynamo's
    ``BackendCompilerFailed`` and inductor's ``InductorError`` keep it as ``inner_exception``);
    else None."""
    while error is not None:
        if type(error) is RuntimeError and str(error).startswith("skipping cudagraph"):
            return str(error).splitlines()[0]
        error = getattr(error, "inner_exception", None) or error.__cause__
    return None


@dataclass(frozen=True, eq=False)
class ModelState:
    """Of what the module guards the compiled steps drop would check, what users and libraries
    change on a loaded model: its modules (which must stay the ones the path was attached to),
    each module's own ``forward`` (accelerate puts one there), hooks and plain attributes (mode,
    adapter switches), each parameter and buffer with its dtype, device, shape and strides, and
    the config's plain values (its attention implementation among them). Objects are compared by
    identity, the rest by value."""

    modules: tuple[nn.Module, ...]
    objects: tuple[object, ...]
    values: tuple[object, ...]

    @classmethod
    def of(cls, model: nn.Module) -> ModelState:
        modules = tuple(model.modules())
        objects: list[object] = []
        values: list[object] = [_plain(model.config)]
        for module in modules:
            objects += [vars(module).get("forward"), *module._forward_hooks.values()]
            objects += module._forward_pre_hooks.values()
            values.append(_plain(module))
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            objects.append(tensor)
            values.append((tensor.dtype, tensor.device, tensor.shape, tensor.stride()))
        return cls(modules, tuple(objects), tuple(values))

    def same_modules(self, other: ModelState) -> bool:
        return _identical(self.modules, other.modules)

    def matches(self, other: ModelState) -> bool:
        same = self.same_modules(other) and _identical(self.objects, other.objects)
        return same and self.values == other.values


def _plain(obj: object) -> tuple[tuple[str, object], ...]:
    return tuple((key, value) for key, value in vars(obj).items() if isinstance(value, _PLAIN))


def _identical(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))
