"""The bench's compiled path (``ffnskip bench --compile``): each configuration decoded by
``skip.decode.CompiledDecoder`` (static KV cache, one compiled step per token) instead of HF
``generate``, timed per step, with the same warm-up run and round-robin repetitions as
``bench._generate_runs``. Configurations without a device form (plain HF, layer methods,
``spread``) have no compiled row."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..skip.decode import CompiledDecoder
from ..skip.engine import SkipEngine, make_engine, spanning
from ..skip.rule import FFNRule
from ..skip.stats import SkipStats
from ..skip.steps import StepCounter


def compiles(config: object) -> bool:
    """Whether ``config`` (a ``bench.Config``) has a compiled row: an FFN rule with a device form."""
    rule = config.policy and config.policy.rule
    return rule is not None and issubclass(rule, FFNRule) and rule.device is not FFNRule.device


def compiled_runs(
    model: nn.Module, batch: dict, configs: list, new_tokens: int, reps: int
) -> tuple[dict[str, list[list[float]]], dict[str, object], dict[str, None], dict[str, float]]:
    """As ``bench._generate_runs`` (pass times [prefill, step 1, ...] of each repetition, what
    the engine did in the last, no peak memory), plus the seconds each configuration's first
    (compiling) run took."""
    from .bench import Counts, _mark, _seconds

    cuda = model.device.type == "cuda"
    ids, mask = batch["input_ids"], batch["attention_mask"]
    runs: dict[str, list[list[float]]] = {c.name: [] for c in configs}
    engines = {c.name: make_engine(model, spanning(c.policy, new_tokens)) for c in configs}
    decoders = {name: CompiledDecoder(model, engine) for name, engine in engines.items()}
    for name, decoder in decoders.items():
        with _installed(engines[name]):
            decoder.generate(ids, mask, 8, min_new_tokens=8, eos_token_id=_eos(model))
    for _ in range(reps):
        for name, decoder in decoders.items():
            engine = engines[name]
            engine.stats, engine.steps = (
                SkipStats(engine.layout.n_layers),
                StepCounter(engine.policy.skip_prompt),
            )
            marks: list[object] = []
            with _installed(engine):
                decoder.generate(
                    ids,
                    mask,
                    new_tokens,
                    min_new_tokens=new_tokens,
                    eos_token_id=_eos(model),
                    clock=lambda marks=marks: marks.append(_mark(cuda)),
                )
            if cuda:
                torch.cuda.synchronize()
            runs[name].append([_seconds(a, b) for a, b in itertools.pairwise(marks)])
    counts = {name: Counts.of(engine, new_tokens) for name, engine in engines.items()}
    return runs, counts, dict.fromkeys(runs), {name: d.compile_s for name, d in decoders.items()}


@contextmanager
def _installed(engine: SkipEngine) -> Iterator[None]:
    """``engine``'s hooks on the model for the block (the decoder swaps them for its own)."""
    engine.install()
    try:
        yield
    finally:
        engine.remove()


def _eos(model: nn.Module) -> int | list[int] | None:
    return model.generation_config.eos_token_id
