"""How the compiled decoding path's step is compiled, and when it must be compiled again.

The step is compiled whole (``torch.compile(fullgraph=True, dynamic=False)``, inductor: one
compile per batch shape) as its own code object, without dynamo's guards on the model's modules
(``guard_filter_fn``, PyTorch's "reducing guard overhead" knob: most of a step's guards check the
modules' attributes, parameters and hooks on every call). What those guards would have caught is
compared once per generation instead (``ModelState``). Inductor's own per-call layout checks stay
(``size_asserts``): the same flag checks each fallback kernel's output layout, which a torch
release that mispredicts it would otherwise turn into wrong values instead of an error. On CUDA
the step is captured as a CUDA graph (whose replays run no checks); inductor is told to raise
where it would skip the capture, and ``graph_refusal`` reads its reason from what reaches the
caller: the step is then compiled without, the reason kept (``CompiledStep.summary``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

# a step captured as a CUDA graph (what ``mode="reduce-overhead"`` sets), a refused capture raised
GRAPH_OPTIONS = {"triton.cudagraphs": True, "triton.cudagraph_or_error": True}
# around a graph's call: a capture refused when called (a mutated input, re-recordings) raises too
REFUSALS_RAISE = {"triton.cudagraph_or_error": True}
# compiled specialisations of the step (one per batch size and cache length) before dynamo gives up:
# its default (8) is reached by an lm-eval run's batch sizes and lengths, and fullgraph raises then
RECOMPILE_LIMIT = 64
GUARD_FILTER = torch.compiler.skip_guard_on_all_nn_modules_unsafe
_PLAIN = (bool, int, float, str, type(None))

log = logging.getLogger(__name__)


class CompiledStep:
    """``fn`` (a step over ``model``) compiled as above, called like ``fn``; on CUDA its outputs
    are copied out of the graph's memory (the next replay writes there)."""

    def __init__(self, fn: types.FunctionType, model: nn.Module) -> None:
        self.fn, self.model = fn, model
        self.graphs = model.device.type == "cuda"
        self.refused: str | None = None  # inductor's reason for refusing the CUDA graph
        self.compile_s = 0.0  # seconds spent in calls that compiled (the first per shape)
        self.calls = 0
        self._shapes: set[tuple[torch.Size, ...]] = set()
        self._seen: ModelState | None = None  # the model as the compiled step saw it
        self._compiled = compiled_step(fn, self.graphs)

    def summary(self) -> dict[str, object]:
        """Steps decoded, batch shapes compiled, and where the step ran as a CUDA graph (``on``,
        or ``off: <why>``)."""
        graphs = "on" if self.graphs else f"off: {self.refused or f'decoding on {self.model.device.type}'}"
        return {"steps": self.calls, "shapes_compiled": len(self._shapes), "cuda_graphs": graphs}

    @contextlib.contextmanager
    def shapes_allowed(self) -> Iterator[None]:
        """While the block runs, dynamo compiles up to ``RECOMPILE_LIMIT`` shapes of the step."""
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            yield

    def renew_if_changed(self) -> bool:
        """Compile the step anew where the model is not as it saw it (it does not guard its
        modules), and say so; RuntimeError where its modules are not the ones it was made for
        (a caller's patches are on those)."""
        state, seen = ModelState.of(self.model), self._seen
        if seen is not None and not state.same_modules(seen):
            raise RuntimeError(
                "the model's modules changed since the compiled decoding path was attached to it; "
                "attach the engine again"
            )
        self._seen = state
        if seen is None or state.matches(seen):
            return False
        log.info("compiled decoding: the model changed since its step was compiled; recompiling")
        self._compiled = compiled_step(self.fn, self.graphs)
        self._shapes.clear()
        return True

    def __call__(self, *args: object) -> tuple[torch.Tensor, ...]:
        shape = tuple(a.shape for a in args if isinstance(a, torch.Tensor))
        start = time.perf_counter() if shape not in self._shapes else None
        try:
            out = self._graphed(args) if self.graphs else None
            if out is None:
                out = self._compiled(*args)
        finally:
            if start is not None:  # a call that failed compiling counts too
                self.compile_s += time.perf_counter() - start
                self._shapes.add(shape)
        self.calls += 1
        return out

    def _graphed(self, args: tuple[object, ...]) -> tuple[torch.Tensor, ...] | None:
        """The step as a CUDA graph, its outputs copied; None where inductor refused the graph,
        which it does before the step runs: the step is then compiled without."""
        torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs have been copied
        try:
            with torch._inductor.config.patch(REFUSALS_RAISE):
                out = self._compiled(*args)
        except RuntimeError as error:
            if (reason := graph_refusal(error)) is None:
                raise
            log.warning("compiled decoding: the step runs without CUDA graphs: %s", reason)
            self.graphs, self.refused = False, reason
            self._compiled = compiled_step(self.fn)
            return None
        return tuple(t.clone() for t in out)


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
