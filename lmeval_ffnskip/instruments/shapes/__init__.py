"""Shape-only models: a real architecture's config with random weights, for decode speed.

Speed depends on the shapes and on which blocks run, not on the weights' values, so a model of
the paper's size can be timed without a download. Only speed means anything on these models:
their similarities, and so any weight-dependent skip decision, are noise.

A *thin* shape keeps a model's depth, modules and operations but shrinks every width, so each
operation costs little more than its dispatch: the regime of a launch-bound GPU (HF eager
decoding of Llama-2-7B on an H200 spends about 28 ms a step issuing kernels against 3 ms of
weight streaming), reproduced on a CPU, where the engine's own host work can be measured
without a GPU. It leaves out what a GPU adds: the host reads' round trips.

A *tiny* model (``tiny_model``: 64 wide, 97 tokens) runs in milliseconds; the tests and
``scripts/gpu_check.py`` decode with it, on ``tiny_batches``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def thin(values: dict[str, object]) -> dict[str, object]:
    """``values`` with every width shrunk (3 to 8 heads of 16, the grouped-query ratio and the FFN's
    and each expert's expansion ratios kept, a 1024-token vocabulary); depth, layer structure and
    the experts' count and top-k unchanged."""
    hidden, heads = int(values["hidden_size"]), int(values["num_attention_heads"])
    groups = heads // int(values.get("num_key_value_heads", heads))
    kv_heads = max(1, 4 // groups)
    width = 16 * groups * kv_heads
    ffn_widths = ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size")
    return {
        **values,
        **{key: round(width * int(values[key]) / hidden) for key in ffn_widths if key in values},
        "hidden_size": width,
        "num_attention_heads": groups * kv_heads,
        "num_key_value_heads": kv_heads,
        "head_dim": 16,
        "vocab_size": 1024,
    }


def shape_model(
    name: str,
    dtype: torch.dtype,
    device: str | torch.device,
    thin_widths: bool = False,
    check: Callable[[Any], None] | None = None,
) -> nn.Module:
    """A randomly initialised causal LM of shape ``name`` (``thin_widths``: its ``thin`` variant),
    built directly on ``device`` once ``check`` (a ValueError) passed its config and its weights
    fit the free memory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = {k: v for k, v in shape_config(name).items() if k != "source"}
    if thin_widths:
        values, name = thin(values), f"{name}-thin"
    config = AutoConfig.for_model(values.pop("model_type"), max_position_embeddings=4096, **values)
    config._name_or_path = f"shape:{name}"
    if check is not None:
        check(config)
    with torch.device("meta"):  # its size, before any memory is taken
        needed = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    needed *= dtype.itemsize
    free = _free_bytes(torch.device(device))
    if needed > 0.9 * free:
        raise ValueError(
            f"--shape {name} in {str(dtype).removeprefix('torch.')} needs {needed / 1e9:.1f} GB of weights "
            f"and {free / 1e9:.1f} GB are free on {device}; add --thin, or a smaller dtype or shape"
        )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _free_bytes(device: torch.device) -> int:
    """Memory free for weights on ``device``: the GPU's free memory, or the host's available RAM
    (the kernel's MemAvailable, which counts the page cache it can drop, where it says)."""
    import os

    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def token_batch(vocab_size: int, batch_size: int, device: str | torch.device) -> dict[str, torch.Tensor]:
    """Left-padded random prompts of 7 to 12 tokens (the bench prompts' lengths), fixed seed."""
    import torch

    gen = torch.Generator().manual_seed(0)
    lengths = [7 + (5 * i) % 6 for i in range(batch_size)]
    width = max(lengths)
    ids = torch.randint(3, vocab_size, (batch_size, width), generator=gen)
    mask = (torch.arange(width) >= width - torch.tensor(lengths)[:, None]).long()
    return {"input_ids": (ids * mask).to(device), "attention_mask": mask.to(device)}


# per architecture, what tiny_model sets beyond the shared tiny widths (None: leaves a width
# out): a short sliding window, a residual multiplier other than 1, a handful of small experts,
# rotary dimensions within a head
TINY_EXTRA: dict[str, dict[str, object]] = {
    "gptj": {"rotary_dim": 8},
    "falcon": {"head_dim": None},  # a property of its config, hidden_size / num_attention_heads
    "gemma3_text": {"sliding_window": 16},
    "olmo3": {"sliding_window": 16},
    "granite": {"residual_multiplier": 0.5},
    "granitemoe": {"residual_multiplier": 0.5, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    "qwen2_moe": {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 64,
    },
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "olmoe": {"num_experts": 4, "num_experts_per_tok": 2},
    "deepseek_v3": {
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "first_k_dense_replace": 1,
        "n_group": 1,
        "topk_group": 1,
        "kv_lora_rank": 16,
        "q_lora_rank": 32,
        "qk_rope_head_dim": 8,
        "head_dim": 8,  # the rotary part of a head
        "num_key_value_heads": 4,  # latent attention: every head has its keys
        "qk_nope_head_dim": 8,
        "v_head_dim": 16,
    },
}


def tiny_model(model_type: str = "llama", n_layers: int = 8, seed: int = 0, **config: object) -> nn.Module:
    """A randomly initialised decoder of ``model_type`` small enough to run in milliseconds (fp32,
    on the CPU; pad, EOS and BOS ids 0, 1, 2), ``config`` set beyond the tiny widths."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    widths = {
        "num_hidden_layers": n_layers,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 97,
        "max_position_embeddings": 256,
        "initializer_range": 0.25,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    }
    values = {**widths, **TINY_EXTRA.get(model_type, {}), **config}
    config = AutoConfig.for_model(model_type, **{k: v for k, v in values.items() if v is not None})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def tiny_batches(device: str | torch.device = "cpu") -> list[dict[str, torch.Tensor]]:
    """Two prompt batches for ``tiny_model``: one row of 7 tokens, and 3 rows of 7 left-padded to
    4, 7 and 6 real tokens (fixed seed)."""
    import torch

    gen = torch.Generator().manual_seed(1)
    single = torch.randint(3, 97, (1, 7), generator=gen)
    padded = torch.randint(3, 97, (3, 7), generator=gen)
    mask = torch.ones_like(padded)
    mask[0, :3] = mask[2, :1] = 0
    return [
        {"input_ids": single.to(device), "attention_mask": torch.ones_like(single).to(device)},
        {"input_ids": padded.masked_fill(mask == 0, 0).to(device), "attention_mask": mask.to(device)},
    ]
