"""Where the FFN block sits in a stock transformers decoder layer, per architecture.

Every supported layer computes ``h = h + out_norm(mlp(in_norm(h)))`` after attention, where
``out_norm`` is absent for Llama-style layers. The engine needs the three modules; nothing
here copies or replaces HF modeling code.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# model_type -> (input norm of the FFN, output norm of the FFN or None)
ARCHITECTURES: dict[str, tuple[str, str | None]] = {
    "llama": ("post_attention_layernorm", None),
    "mistral": ("post_attention_layernorm", None),
    "qwen2": ("post_attention_layernorm", None),
    "qwen3": ("post_attention_layernorm", None),
    "gemma": ("post_attention_layernorm", None),
    "gemma2": ("pre_feedforward_layernorm", "post_feedforward_layernorm"),
    "gemma3_text": ("pre_feedforward_layernorm", "post_feedforward_layernorm"),
}


@dataclass(frozen=True)
class FFNSite:
    """The FFN block of one decoder layer."""

    index: int
    mlp: nn.Module
    in_norm: nn.Module
    out_norm: nn.Module | None


def check_model_type(model_type: str | None) -> None:
    """NotImplementedError naming ``model_type`` and the supported ones unless it is one of them
    (``ffn_sites`` asks the loaded model; ``checkpoints.preflight`` asks config.json first)."""
    if model_type not in ARCHITECTURES:
        raise NotImplementedError(
            f"FFN skipping does not support model_type={model_type!r}; supported: "
            f"{', '.join(sorted(ARCHITECTURES))}. Other dense decoder-only models need an entry "
            "in lmeval_ffnskip/skip/adapters.py:ARCHITECTURES."
        )


def ffn_sites(model: nn.Module) -> tuple[nn.Module, list[FFNSite]]:
    """Return the decoder stack (the module that runs all layers) and its FFN sites."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    check_model_type(model_type)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise NotImplementedError(f"{type(model).__name__} has no decoder `layers`; cannot attach")
    in_name, out_name = ARCHITECTURES[model_type]
    sites = []
    for i, layer in enumerate(layers):
        mlp = getattr(layer, "mlp", None)
        if not isinstance(mlp, nn.Module) or not hasattr(layer, in_name):
            raise NotImplementedError(
                f"layer {i} of {type(model).__name__} has no dense `mlp` and `{in_name}`; "
                "mixture-of-experts and parallel-block layers are not supported"
            )
        sites.append(FFNSite(i, mlp, getattr(layer, in_name), getattr(layer, out_name) if out_name else None))
    return decoder, sites
