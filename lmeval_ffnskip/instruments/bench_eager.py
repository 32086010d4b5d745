"""The bench's eager runs: HF ``generate`` with each configuration's engine attached, timed per
forward pass (``generate_runs``), or every configuration's passes replayed in turns
(``lockstep_runs``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..skip.engine import attach, generate_fixed, make_engine, spanning
from ..skip.hf_compat import cache_keyword, output_cache
from ..skip.hooks import installed
from ..skip.settings import SkipPolicy
from .bench_configs import Config
from .timing import Counts, StepClock, mark, seconds


@contextlib.contextmanager
def maybe_attached(model: nn.Module, policy: SkipPolicy | None, new_tokens: int) -> Iterator[object]:
    if policy is None:
        yield None
    else:
        with attach(model, spanning(policy, new_tokens)) as engine:
            yield engine


@torch.no_grad()
def _timed_generate(model: nn.Module, batch: dict, new_tokens: int) -> list[float]:
    clock = StepClock(model)
    try:
        generate_fixed(model, batch, new_tokens)
        return clock.intervals()
    finally:
        clock.close()


@torch.no_grad()
def lockstep(
    model: nn.Module, batch: dict, configs: list[Config], sequences: dict[str, torch.Tensor]
) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Replay each configuration's own greedy continuation (``sequences``, from ``generate``)
    with the configurations taking turns pass by pass (the order rotated every pass), each with
    its own KV cache and its engine installed only for its own passes: the passes ``generate``
    makes, paired in time. Returns each one's pass times [prefill, step 1, ...] (the forward
    passes alone, without ``generate``'s per-step work) and its engine."""
    cuda = model.device.type == "cuda"
    prompt = batch["input_ids"].shape[1]
    new_tokens = next(iter(sequences.values())).shape[1] - prompt
    engines = {c.name: c.policy and make_engine(model, spanning(c.policy, new_tokens)) for c in configs}
    caches: dict[str, object] = dict.fromkeys(engines)
    marks: dict[str, list[tuple[object, object]]] = {name: [] for name in engines}
    names = list(engines)
    keyword = cache_keyword(model)
    ones = batch["attention_mask"].new_ones(len(batch["input_ids"]), new_tokens)
    for step in range(new_tokens):
        first, end = (0, prompt) if step == 0 else (prompt + step - 1, prompt + step)  # this pass's tokens
        mask = torch.cat([batch["attention_mask"], ones[:, :step]], 1)
        # as generate: positions count the real tokens, padding sits at 0
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, first:end]
        for name in names[step % len(names) :] + names[: step % len(names)]:
            ids = sequences[name][:, first:end]
            engine = engines[name]
            with contextlib.nullcontext() if engine is None else installed(engine):
                start = mark(cuda)
                out = model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    **{keyword: caches[name]},
                )
                marks[name].append((start, mark(cuda)))
            caches[name] = output_cache(out)
    if cuda:
        torch.cuda.synchronize()
    return {name: [seconds(a, b) for a, b in pairs] for name, pairs in marks.items()}, engines


# per configuration: pass times of each repetition, what its engine did, peak memory
Runs = tuple[dict[str, list[list[float]]], dict[str, Counts], dict[str, int | None]]


def generate_runs(model: nn.Module, batch: dict, configs: list[Config], new_tokens: int, reps: int) -> Runs:
    """Per configuration: the pass times of each timed ``generate``, the skip ratio, peak memory."""
    runs: dict[str, list[list[float]]] = {c.name: [] for c in configs}
    counts: dict[str, Counts] = {}
    peaks: dict[str, int | None] = {}
    cuda = model.device.type == "cuda"
    for config in configs:
        with maybe_attached(model, config.policy, 8):
            _timed_generate(model, batch, 8)
    for _ in range(reps):
        for config in configs:
            if cuda:
                torch.cuda.reset_peak_memory_stats(model.device)
            with maybe_attached(model, config.policy, new_tokens) as engine:
                runs[config.name].append(_timed_generate(model, batch, new_tokens))
            peaks[config.name] = torch.cuda.max_memory_allocated(model.device) if cuda else None
            counts[config.name] = Counts.of(engine, new_tokens)
    return runs, counts, peaks


def lockstep_runs(model: nn.Module, batch: dict, configs: list[Config], new_tokens: int, reps: int) -> Runs:
    """As ``generate_runs``, every repetition one ``lockstep`` replay of the continuations that
    a first, untimed ``generate`` per configuration made (no peak memory: the configurations'
    KV caches are all held at once)."""
    sequences = {}
    for config in configs:
        with maybe_attached(model, config.policy, new_tokens):
            sequences[config.name] = generate_fixed(model, batch, new_tokens)
    runs: dict[str, list[list[float]]] = {c.name: [] for c in configs}
    counts: dict[str, Counts] = {}
    for _ in range(reps):
        times, engines = lockstep(model, batch, configs, sequences)
        for config in configs:
            runs[config.name].append(times[config.name])
            counts[config.name] = Counts.of(engines[config.name], new_tokens)
    return runs, counts, dict.fromkeys(runs)
