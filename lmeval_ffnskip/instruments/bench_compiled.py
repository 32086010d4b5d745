"""The bench's compiled paths (``ffnskip bench --compile``).

``compiled``: each configuration decoded by ``skip.decode.CompiledDecoder`` (static KV cache,
one compiled step per token) instead of HF ``generate``, timed per step, after an untimed run
of the full length (which compiles the step for the batch shape) and in round-robin repetitions
as ``bench._generate_runs``; configurations without a device
form (plain HF, the layer methods) have no compiled row. ``hf-static``: what a user would pick
instead, plain HF ``generate`` with ``cache_implementation="static"``, which compiles the
decoding step itself (its ``CompileConfig``; on a CPU only when told to compile on every device),
timed per step by a streamer (the compiled forward leaves no room for hooks)."""

from __future__ import annotations

import time

import torch
from torch import nn

from ..skip.decode import CompiledDecoder, refusal
from ..skip.engine import make_engine, spanning
from .timing import Counts, StepMarks, intervals, mark


def compiles(config: object) -> bool:
    """Whether ``config`` (a ``bench.Config``) has a compiled row (``decode.refusal``)."""
    return config.policy is not None and refusal(config.policy) is None


def compiled_runs(
    model: nn.Module, batch: dict, configs: list, new_tokens: int, reps: int
) -> tuple[dict[str, list[list[float]]], dict[str, object], dict[str, None], dict[str, dict[str, object]]]:
    """As ``bench._generate_runs`` (pass times [prefill, step 1, ...] of each repetition, what
    the engine did in the last, no peak memory), plus per configuration the seconds its compiling
    calls took and how its steps were decoded (``CompiledDecoder.summary``, over every run)."""
    cuda = model.device.type == "cuda"
    ids, mask = batch["input_ids"], batch["attention_mask"]
    runs: dict[str, list[list[float]]] = {c.name: [] for c in configs}
    engines = {c.name: make_engine(model, spanning(c.policy, new_tokens)) for c in configs}
    decoders = {name: CompiledDecoder(model, engine) for name, engine in engines.items()}
    for decoder in decoders.values():
        decoder.generate(ids, mask, new_tokens, min_new_tokens=new_tokens, eos_token_id=_eos(model))
    for _ in range(reps):
        for name, decoder in decoders.items():
            engines[name].reset()  # the counters of this run alone
            marks: list[object] = []
            decoder.generate(
                ids,
                mask,
                new_tokens,
                min_new_tokens=new_tokens,
                eos_token_id=_eos(model),
                clock=lambda marks=marks: marks.append(mark(cuda)),
            )
            runs[name].append(intervals(marks, cuda))
    counts = {name: Counts.of(engine, new_tokens) for name, engine in engines.items()}
    extras = {name: {"compile_s": d.compile_s, "compiled_steps": d.summary()} for name, d in decoders.items()}
    return runs, counts, dict.fromkeys(runs), extras


def hf_static_runs(
    model: nn.Module, batch: dict, new_tokens: int, reps: int
) -> tuple[list[list[float]], float]:
    """Pass times [prefill, step 1, ...] of each of ``reps`` plain HF ``generate`` runs with a
    static cache and HF's own compiled decoding step, after one untimed run whose seconds are
    returned as the compile time. RuntimeError where HF did not compile the step."""
    from transformers import CompileConfig

    compile_config = CompileConfig()
    compile_config._compile_all_devices = model.device.type == "cpu"  # HF compiles on GPUs only, unless told
    kwargs = {
        **batch,
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": False,
        "cache_implementation": "static",
        "compile_config": compile_config,
    }
    vars(model).pop("_compiled_call", None)
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(**kwargs)
        compile_s = time.perf_counter() - start
        if "_compiled_call" not in vars(model):
            raise RuntimeError(
                f"{model.config.model_type}: transformers did not compile generate's decoding step "
                "(its auto-compile criteria were not met)"
            )
        runs = []
        for _ in range(reps):
            marks = StepMarks(model.device.type == "cuda")
            model.generate(**kwargs, streamer=marks)
            runs.append(marks.intervals())
    return runs, compile_s


def _eos(model: nn.Module) -> int | list[int] | None:
    return model.generation_config.eos_token_id
