"""Where the FFN block sits in a stock transformers decoder layer, per architecture.

A sequential layer computes ``h = h + scale * out_norm(block(in_norm(h)))`` after attention,
where ``in_norm`` is absent in OLMo-2-style layers (the block reads ``h`` itself), ``out_norm``
absent in Llama-style ones, and ``scale`` is 1 but in Granite's (its ``residual_multiplier``).
A parallel layer (GPT-NeoX, Phi-2, Falcon, GPT-J, Cohere; StableLM where its config says so)
adds attention's output and the block's to the same input, ``h + attn(norm(h)) +
block(in_norm(h))``, where ``in_norm`` is the block's own norm or absent (the block shares
attention's ``norm``). The block is a dense MLP or
a mixture of experts (router, experts and any shared expert as one module: a skipped block runs
none of them). The engine needs these modules and the scale; the facts per architecture are
written once, in ``ARCHITECTURES``, and nothing here copies or replaces HF modeling code.
Architectures whose layers have no such block are refused by name, with the reason
(``REFUSED``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Family:
    """How one architecture's decoder layer holds its FFN block: the attribute names of the
    block's input norm (None: the block reads the residual stream itself, or in a parallel layer
    attention's normed input) and output norm (None: none), of the block, and of the config value
    that scales the block's output in the residual add (None: 1); ``gated_mlp``: the block is a
    gated MLP of separate ``gate_proj`` / ``up_proj`` / ``down_proj`` linears (what the compiled
    path's FFN op runs). ``layers``: the decoder stack's list of layers; ``attention``: a layer's
    attention module (its first output is what it adds); ``parallel``: in a parallel layer, the
    module whose input is the layer's input ``h`` (attention's input norm), else None;
    ``adds_in_place``: the layer adds attention's output into the block's output in place."""

    in_norm: str | None = "post_attention_layernorm"
    out_norm: str | None = None
    block: str = "mlp"
    scale: str | None = None
    gated_mlp: bool = True
    layers: str = "layers"
    attention: str = "self_attn"
    parallel: str | None = None
    adds_in_place: bool = False


def _gpt_neox(config: Any) -> Family:
    """GPT-NeoX (Pythia): parallel with ``use_parallel_residual`` (the block keeps its own norm),
    sequential without."""
    neox = Family(attention="attention", gated_mlp=False)  # not gated: dense_h_to_4h, dense_4h_to_h
    return dataclasses.replace(neox, parallel="input_layernorm") if config.use_parallel_residual else neox


def _stablelm(config: Any) -> Family:
    """StableLM: parallel with ``use_parallel_residual`` (the block shares attention's input
    norm), sequential without."""
    return Family(in_norm=None, parallel="input_layernorm") if config.use_parallel_residual else Family()


def _falcon(config: Any) -> Family:
    """Falcon: parallel where its config says so (``parallel_attn``, or the new decoder
    architecture, whose two norms read the layer's input), sequential otherwise."""
    falcon = Family(layers="h", attention="self_attention", gated_mlp=False)
    if not (config.parallel_attn or config.new_decoder_architecture):
        return falcon
    falcon = dataclasses.replace(falcon, adds_in_place=True)  # mlp_output += attention_output
    if config.new_decoder_architecture and getattr(config, "num_ln_in_parallel_attn", None) in (None, 2):
        return dataclasses.replace(falcon, in_norm="ln_mlp", parallel="ln_attn")
    return dataclasses.replace(falcon, in_norm=None, parallel="input_layernorm")  # one shared norm


ARCHITECTURES: dict[str, Family | Callable[[Any], Family]] = {
    # dense, sequential
    "llama": Family(),
    "mistral": Family(),
    "qwen2": Family(),
    "qwen3": Family(),
    "smollm3": Family(),
    "phi3": Family(gated_mlp=False),  # gate and up projections fused in one linear
    "glm4": Family(out_norm="post_mlp_layernorm", gated_mlp=False),  # gate and up fused too
    "starcoder2": Family(gated_mlp=False),  # not gated: c_fc, c_proj
    "granite": Family(scale="residual_multiplier"),
    "olmo2": Family(in_norm=None, out_norm="post_feedforward_layernorm"),
    "olmo3": Family(in_norm=None, out_norm="post_feedforward_layernorm"),
    "gemma": Family(),
    "gemma2": Family(in_norm="pre_feedforward_layernorm", out_norm="post_feedforward_layernorm"),
    "gemma3_text": Family(in_norm="pre_feedforward_layernorm", out_norm="post_feedforward_layernorm"),
    # dense, attention and FFN in parallel (the block shares attention's input norm but in
    # gpt_neox and Falcon's new architecture); gpt_neox, stablelm and falcon per config
    "gpt_neox": _gpt_neox,
    "stablelm": _stablelm,
    "falcon": _falcon,
    "phi": Family(in_norm=None, gated_mlp=False, parallel="input_layernorm"),  # fc1, fc2
    "gptj": Family(in_norm=None, gated_mlp=False, layers="h", attention="attn", parallel="ln_1"),
    "cohere": Family(in_norm=None, parallel="input_layernorm"),
    # mixture of experts (the router and every expert, shared ones too, are the block)
    "qwen3_moe": Family(gated_mlp=False),
    "qwen2_moe": Family(gated_mlp=False),
    "mixtral": Family(gated_mlp=False),
    "olmoe": Family(gated_mlp=False),
    "deepseek_v3": Family(gated_mlp=False),  # dense blocks in the first layers, experts after
    "granitemoe": Family(block="block_sparse_moe", scale="residual_multiplier", gated_mlp=False),
}

# model_type -> why its layers have no FFN block the rule can skip
_RECURRENT = "its layers mix tokens with a recurrent state, not attention then an FFN block"
REFUSED: dict[str, str] = {
    "mamba": _RECURRENT,
    "mamba2": _RECURRENT,
    "falcon_h1": _RECURRENT,
    "lfm2": _RECURRENT,
    "jamba": _RECURRENT,
    "qwen3_next": _RECURRENT,
    "gpt_oss": "its expert block returns its router scores beside its output, which the engine does not "
    "yet stand in for when the block is skipped",
}


def family(config: Any) -> Family:
    """The ``Family`` of a model of ``config`` (a supported ``model_type``: ``check_model_type``)."""
    check_model_type(config.model_type)
    entry = ARCHITECTURES[config.model_type]
    return entry if isinstance(entry, Family) else entry(config)


@dataclass(frozen=True)
class FFNSite:
    """The FFN block of one decoder layer: ``mlp`` is the block (dense or experts), ``in_norm`` /
    ``out_norm`` its norms (either may be None), ``scale`` what the layer multiplies its output
    by before adding it to the residual stream; ``layer`` the decoder layer and ``attention`` its
    attention module; ``parallel``: in a parallel layer, the module whose input is the layer's
    input (else None); ``adds_in_place`` as in ``Family``."""

    index: int
    layer: nn.Module
    attention: nn.Module
    mlp: nn.Module
    in_norm: nn.Module | None
    out_norm: nn.Module | None
    scale: float = 1.0
    parallel: nn.Module | None = None
    adds_in_place: bool = False

    @property
    def entry(self) -> nn.Module:
        """The block's first module (in a sequential layer its input is the residual stream ``h``)."""
        return self.in_norm if self.in_norm is not None else self.mlp


def watch_stream(
    site: FFNSite, keep: Callable[[torch.Tensor], None]
) -> list[torch.utils.hooks.RemovableHandle]:
    """Plain hooks on ``site``'s stock modules that hand ``keep`` the residual stream the block's
    contribution is added to, in every forward pass: ``h`` as the block's entry reads it, or, in
    a parallel layer, the layer's input plus attention's output."""
    if site.parallel is None:
        return [site.entry.register_forward_pre_hook(lambda m, args: keep(args[0]))]
    seen: dict[str, torch.Tensor] = {}
    return [
        site.parallel.register_forward_pre_hook(lambda m, args: seen.__setitem__("h", args[0])),
        site.attention.register_forward_hook(lambda m, args, out: keep(seen.pop("h") + out[0])),
    ]


def check_model_type(model_type: str | None) -> None:
    """NotImplementedError naming ``model_type`` and the reason, or the supported ones, unless it
    is one of them (``ffn_sites`` asks the loaded model; ``checkpoints.preflight`` asks
    config.json first)."""
    if model_type in REFUSED:
        raise NotImplementedError(
            f"FFN skipping does not support model_type={model_type!r}: {REFUSED[model_type]}"
        )
    if model_type not in ARCHITECTURES:
        raise NotImplementedError(
            f"FFN skipping does not support model_type={model_type!r}; supported: "
            f"{', '.join(sorted(ARCHITECTURES))}. Other decoder-only models whose layers add an FFN "
            "block to the residual stream after attention need an entry in "
            "lmeval_ffnskip/skip/adapters.py:ARCHITECTURES."
        )


def ffn_sites(model: nn.Module) -> tuple[nn.Module, list[FFNSite]]:
    """Return the decoder stack (the module that runs all layers) and its FFN sites."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    check_model_type(model_type)
    found = family(config)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    if not hasattr(decoder, found.layers):
        raise NotImplementedError(f"{type(model).__name__} has no decoder `{found.layers}`; cannot attach")
    if getattr(config, "output_router_logits", False):
        raise NotImplementedError(
            f"{model_type}: output_router_logits=True collects every layer's router logits, which a "
            "skipped expert block does not compute; load the model with output_router_logits=False"
        )
    scale = 1.0 if found.scale is None else float(getattr(config, found.scale))
    sites = []
    for i, layer in enumerate(getattr(decoder, found.layers)):
        names = [found.attention, found.block, found.in_norm, found.out_norm, found.parallel]
        modules = [None if name is None else getattr(layer, name, None) for name in names]
        missing = [name for name, module in zip(names, modules, strict=True) if name and module is None]
        if missing:
            raise NotImplementedError(
                f"layer {i} of {type(model).__name__} has no {', '.join(f'`{m}`' for m in missing)}, "
                f"where {model_type} layers keep their FFN block"
            )
        attention, block, in_norm, out_norm, parallel = modules
        sites.append(
            FFNSite(
                i,
                layer,
                attention,
                block,
                in_norm,
                out_norm,
                scale,
                parallel,
                found.adds_in_place,
            )
        )
    return decoder, sites
