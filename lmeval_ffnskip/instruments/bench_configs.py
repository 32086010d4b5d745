"""The configurations ``ffnskip bench`` measures, and the prompts it decodes from."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..skip.naming import DENSE, config_name
from ..skip.policy import CHECKS_ONLY, NEVER, PolicyFields
from ..skip.settings import SkipPolicy

HF_STATIC = "hf-static"  # the config and path of HF's own static-cache compiled generate

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


def default_configs(
    targets: tuple[float, ...],
    threshold: float = PolicyFields.threshold,
    methods: tuple[str, ...] = ("ffnskip",),
    overheads: bool = True,
) -> list[Config]:
    """Plain HF, the engine with skipping off or checking only (``overheads``: the engine's own
    costs), every FFN skipped, each method per target (``spread`` and ``shortgpt`` need
    ``calibrate.with_calibration`` before use)."""
    configs = [Config("hf", None), Config(DENSE, SkipPolicy(method=DENSE))]
    if overheads:
        configs += [
            Config("ffnskip-off", SkipPolicy(threshold=NEVER, warmup=0)),
            # measures at every non-cold layer and never fires: the full cost of checks and host reads
            Config("checks-only", SkipPolicy(threshold=CHECKS_ONLY, warmup=0)),
        ]
    configs.append(Config("skip-all", SkipPolicy(method="random", target_skip=1.0, warmup=0)))
    configs += [
        Config(
            config_name(m, t),
            SkipPolicy(method=m, target_skip=t, warmup=0, threshold=threshold),
        )
        for m in methods
        for t in targets
    ]
    return configs


def prompt_batch(tokenizer: object, batch_size: int, device: torch.device | str) -> dict:
    """The first ``batch_size`` bench prompts (cycled), left-padded, on ``device``."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch_size)]
    return dict(tokenizer(prompts, return_tensors="pt", padding=True).to(device))
