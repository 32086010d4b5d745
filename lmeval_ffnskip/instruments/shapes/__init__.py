"""Shape-only models: a real architecture's config with random weights, for decode speed.

Speed depends on the shapes and on which blocks run, not on the weights' values, so a model of
the paper's size can be timed without a download. Only speed means anything on these models:
their similarities, and so any weight-dependent skip decision, are noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI lists SHAPES without importing torch
    import torch
    from torch import nn

HERE = Path(__file__).parent
SHAPES = tuple(sorted(p.stem for p in HERE.glob("*.json")))


def shape_config(name: str) -> dict[str, object]:
    """The shipped config of shape ``name`` (its ``source`` line says where it was read from)."""
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; shipped shapes: {', '.join(SHAPES)}")
    return json.loads((HERE / f"{name}.json").read_text())


def shape_model(name: str, dtype: torch.dtype, device: str | torch.device) -> nn.Module:
    """A randomly initialised causal LM of shape ``name``, built directly on ``device``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = {k: v for k, v in shape_config(name).items() if k != "source"}
    config = AutoConfig.for_model(values.pop("model_type"), max_position_embeddings=4096, **values)
    config._name_or_path = f"shape:{name}"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def token_batch(vocab_size: int, batch_size: int, device: str | torch.device) -> dict[str, torch.Tensor]:
    """Left-padded random prompts of 7 to 12 tokens (the bench prompts' lengths), fixed seed."""
    import torch

    gen = torch.Generator().manual_seed(0)
    lengths = [7 + (5 * i) % 6 for i in range(batch_size)]
    width = max(lengths)
    ids = torch.randint(3, vocab_size, (batch_size, width), generator=gen)
    mask = (torch.arange(width) >= width - torch.tensor(lengths)[:, None]).long()
    return {"input_ids": (ids * mask).to(device), "attention_mask": mask.to(device)}
