"""Where the FFN block sits in a stock transformers decoder layer, per architecture.

Every supported layer computes ``h = h + scale * out_norm(block(in_norm(h)))`` after attention,
where ``in_norm`` is absent in OLMo-2-style layers (the block reads ``h`` itself), ``out_norm``
absent in Llama-style ones, and ``scale`` is 1 but in Granite's (its ``residual_multiplier``).
The block is a dense MLP or a mixture of experts (router, experts and any shared expert as one
module: a skipped block runs none of them). The engine needs these modules and the scale; the
facts per architecture are written once, in ``ARCHITECTURES``, and nothing here copies or
replaces HF modeling code. Architectures whose layers have no such block are refused by name,
with the reason (``REFUSED``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Family:
    """How one architecture's decoder layer holds its FFN block: the attribute names of the
    block's input norm (None: the block reads the residual stream itself) and output norm (None:
    none), of the block, and of the config value that scales the block's output in the residual
    add (None: 1); ``gated_mlp``: the block is a gated MLP of separate ``gate_proj`` / ``up_proj``
    / ``down_proj`` linears (what the compiled path's FFN op runs)."""

    in_norm: str | None = "post_attention_layernorm"
    out_norm: str | None = None
    block: str = "mlp"
    scale: str | None = None
    gated_mlp: bool = True


ARCHITECTURES: dict[str, Family] = {
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
    # mixture of experts (the router and every expert, shared ones too, are the block)
    "qwen3_moe": Family(gated_mlp=False),
    "qwen2_moe": Family(gated_mlp=False),
    "mixtral": Family(gated_mlp=False),
    "olmoe": Family(gated_mlp=False),
    "deepseek_v3": Family(gated_mlp=False),  # dense blocks in the first layers, experts after
    "granitemoe": Family(block="block_sparse_moe", scale="residual_multiplier", gated_mlp=False),
}

# model_type -> why its layers have no FFN block the rule can skip
_PARALLEL = (
    "attention and FFN read the same input in parallel (no residual stream between them whose "
    "similarity before and after the FFN the rule could measure)"
)
_RECURRENT = "its layers mix tokens with a recurrent state, not attention then an FFN block"
REFUSED: dict[str, str] = {
    "gpt_neox": _PARALLEL,
    "phi": _PARALLEL,
    "falcon": _PARALLEL,
    "gptj": _PARALLEL,
    "cohere": _PARALLEL,
    "mamba": _RECURRENT,
    "mamba2": _RECURRENT,
    "falcon_h1": _RECURRENT,
    "lfm2": _RECURRENT,
    "jamba": _RECURRENT,
    "qwen3_next": _RECURRENT,
    "gpt_oss": "its expert block returns its router scores beside its output, which the engine does not "
    "yet stand in for when the block is skipped",
}


@dataclass(frozen=True)
class FFNSite:
    """The FFN block of one decoder layer: ``mlp`` is the block (dense or experts), ``in_norm`` /
    ``out_norm`` its norms (either may be None), ``scale`` what the layer multiplies its output
    by before adding it to the residual stream."""

    index: int
    mlp: nn.Module
    in_norm: nn.Module | None
    out_norm: nn.Module | None
    scale: float = 1.0

    @property
    def entry(self) -> nn.Module:
        """The block's first module, whose input is the residual stream ``h``."""
        return self.in_norm if self.in_norm is not None else self.mlp


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
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise NotImplementedError(f"{type(model).__name__} has no decoder `layers`; cannot attach")
    if getattr(config, "output_router_logits", False):
        raise NotImplementedError(
            f"{model_type}: output_router_logits=True collects every layer's router logits, which a "
            "skipped expert block does not compute; load the model with output_router_logits=False"
        )
    family = ARCHITECTURES[model_type]
    scale = 1.0 if family.scale is None else float(getattr(config, family.scale))
    sites = []
    for i, layer in enumerate(layers):
        names = [family.block, family.in_norm, family.out_norm]
        modules = [None if name is None else getattr(layer, name, None) for name in names]
        missing = [name for name, module in zip(names, modules, strict=True) if name and module is None]
        if missing:
            raise NotImplementedError(
                f"layer {i} of {type(model).__name__} has no {', '.join(f'`{m}`' for m in missing)}, "
                f"where {model_type} layers keep their FFN block"
            )
        block, in_norm, out_norm = modules
        sites.append(FFNSite(i, block, in_norm, out_norm, scale))
    return decoder, sites
