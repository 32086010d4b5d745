"""Timing primitives both bench paths use: timestamps that add no host sync on a GPU
(``mark``), the seconds between them, clocks on a model's passes (``StepClock``) or on a
``generate`` streamer (``StepMarks``), and what an engine did in a timed generation (``Counts``)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import torch
from torch import nn


def mark(cuda: bool) -> object:
    """A timestamp: a recorded CUDA event on a GPU (read later, no host sync), else perf_counter."""
    if cuda:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def seconds(start: object, end: object) -> float:
    """Seconds between two ``mark``s (CUDA events must have completed)."""
    return start.elapsed_time(end) / 1000 if isinstance(start, torch.cuda.Event) else end - start


def intervals(marks: list[object], cuda: bool) -> list[float]:
    """Seconds between consecutive ``mark``s (on a GPU once their events have completed)."""
    if cuda:
        torch.cuda.synchronize()
    return [seconds(a, b) for a, b in itertools.pairwise(marks)]


class StepClock:
    """Timestamps of a model's forward passes: the start of the first, the end of each.

    CUDA events on a GPU (read once at the end, so timing adds no host sync), perf_counter
    on CPU. In a ``generate`` call pass 0 is the prefill and every later pass one decoding step.
    """

    def __init__(self, model: nn.Module) -> None:
        self.cuda = model.device.type == "cuda"
        self.marks: list[object] = []
        self._handles = [
            model.register_forward_pre_hook(
                lambda *_: None if self.marks else self.marks.append(mark(self.cuda))
            ),
            model.register_forward_hook(lambda *_: self.marks.append(mark(self.cuda))),
        ]

    def intervals(self) -> list[float]:
        """Seconds between consecutive marks: [prefill, step 1, step 2, ...]."""
        return intervals(self.marks, self.cuda)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


class StepMarks:
    """A ``generate`` streamer that marks time (``mark``) at each ``put``: before the
    prefill (the prompt) and after every new token, so intervals are [prefill, step 1, ...]."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.marks = cuda, []

    def put(self, value: torch.Tensor) -> None:
        self.marks.append(mark(self.cuda))

    def end(self) -> None:
        pass

    def intervals(self) -> list[float]:
        return intervals(self.marks, self.cuda)


@dataclass(frozen=True)
class Counts:
    """What a configuration's engine did in one generation: the share of blocks skipped per
    eligible token (with warmup=0 every decoding pass's, new_tokens - 1 of them: the prefill
    emits the first; for shortgpt every token's), the share that no row of a pass ran (what a
    batch whose FFN cost is its weights' reading can save), and the host reads of similarity
    checks per decoding pass."""

    skip_ratio: float
    skip_ratio_pass: float
    reads_per_step: float

    @classmethod
    def of(cls, engine: object, new_tokens: int) -> Counts:
        if engine is None:  # plain HF: nothing skipped, nothing read
            return cls(0.0, 0.0, 0.0)
        stats = engine.stats
        summary = stats.summary()  # ratios are None only where no token was eligible: none skipped
        return cls(
            summary["skip_ratio_eligible"] or 0.0,
            summary["skip_ratio_pass"] or 0.0,
            stats.host_syncs / max(new_tokens - 1, 1),
        )
