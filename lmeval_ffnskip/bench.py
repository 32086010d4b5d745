"""Decode speed of HF ``generate`` with and without FFN skipping, against the ideal bound.

Decode time is ``T(generate 1 + n new tokens) - T(generate 1 new token)``: n decoding
steps through the same ``generate`` path lm-eval uses, EOS suppressed so every run decodes
n tokens. ``t_ffn`` is the decode time saved by skipping every FFN; a run that skips a
share s of all FFN blocks can at best reach ``t_dense / (t_dense - s * t_ffn)``.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import transformers
from torch import nn

from .engine import attach
from .policy import SkipPolicy

PROMPTS = (
    "The history of the printing press begins",
    "Here is a short recipe for tomato soup:",
    "The main causes of the First World War were",
    "Photosynthesis is the process by which",
    "A good way to learn a new programming language is",
    "The tallest mountains in the world are found",
    "In economics, inflation means",
    "The rules of chess say that a bishop",
)


@dataclass(frozen=True)
class Config:
    """One measured configuration; ``policy=None`` is plain HF with nothing attached."""

    name: str
    policy: SkipPolicy | None


def default_configs(targets: tuple[float, ...]) -> list[Config]:
    """Plain HF, the engine with skipping disabled or checking only, every FFN skipped, ffnskip per target."""
    configs = [
        Config("hf", None),
        Config("dense", SkipPolicy(method="dense")),
        Config("ffnskip-off", SkipPolicy(threshold=2.0, warmup=0)),
        # measures at every non-cold layer and never fires: the full cost of checks and host reads
        Config("checks-only", SkipPolicy(threshold=1.0, warmup=0)),
        Config("skip-all", SkipPolicy(method="random", target_skip=1.0, warmup=0)),
    ]
    configs += [Config(f"ffnskip-{t:g}", SkipPolicy(target_skip=t, warmup=0)) for t in targets]
    return configs


@contextlib.contextmanager
def _maybe_attach(model: nn.Module, policy: SkipPolicy | None) -> Iterator[object]:
    if policy is None:
        yield None
    else:
        with attach(model, policy) as engine:
            yield engine


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _generate_seconds(model: nn.Module, batch: dict, new_tokens: int) -> float:
    _sync(model.device)
    start = time.perf_counter()
    model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    _sync(model.device)
    return time.perf_counter() - start


def decode_speed(
    model: nn.Module,
    tokenizer: object,
    configs: list[Config],
    batch_size: int,
    new_tokens: int = 128,
    reps: int = 3,
) -> list[dict[str, object]]:
    """Median decode tokens/s (rows x steps / second) of each configuration, with its skip ratio.

    Repetitions go round-robin over the configurations, so drift in machine speed (other load,
    clocks) spreads over all of them instead of biasing one.
    """
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch_size)]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    times: dict[str, list[float]] = {c.name: [] for c in configs}
    ratios: dict[str, float] = {}
    _generate_seconds(model, batch, 8)  # warm-up
    for _ in range(reps):
        for config in configs:
            with _maybe_attach(model, config.policy) as engine:
                prefill = _generate_seconds(model, batch, 1)
                times[config.name].append(_generate_seconds(model, batch, new_tokens + 1) - prefill)
            # prompts run full, so every skipped block belongs to a decoding step
            ratios[config.name] = (
                engine.stats.skipped / (batch_size * new_tokens * engine.stats.n_layers) if engine else 0.0
            )
    rows = []
    for config in configs:
        seconds = statistics.median(times[config.name])
        rows.append(
            {
                "config": config.name,
                "batch_size": batch_size,
                "new_tokens": new_tokens,
                "decode_seconds": seconds,
                "decode_seconds_spread": max(times[config.name]) - min(times[config.name]),
                "tokens_per_s": batch_size * new_tokens / seconds,
                "skip_ratio": ratios[config.name],
            }
        )
    return rows


def add_ideal(rows: list[dict[str, object]]) -> None:
    """Add measured speedup vs the engine's dense run, and the ideal speedup at that skip ratio."""
    for bs in {r["batch_size"] for r in rows}:
        group = {r["config"]: r for r in rows if r["batch_size"] == bs}
        t_dense = group["dense"]["decode_seconds"]
        t_ffn = t_dense - group["skip-all"]["decode_seconds"]
        for row in group.values():
            row["speedup"] = t_dense / row["decode_seconds"]
            row["ideal_speedup"] = t_dense / (t_dense - row["skip_ratio"] * t_ffn)
            row["share_of_ideal"] = (
                (row["speedup"] - 1) / (row["ideal_speedup"] - 1) if row["skip_ratio"] else None
            )


def environment(model: nn.Module) -> dict[str, object]:
    """What the figures were measured on."""
    device = model.device
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "dtype": str(model.dtype),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": getattr(model.config, "_name_or_path", ""),
    }
