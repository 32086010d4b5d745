"""Per-token decode FLOPs, counted with fvcore and cross-checked against the architecture.

Convention (fvcore's): one multiply-accumulate counts as one flop, and only matrix products
are counted: the linear layers and attention's two products (QK^T and AV). Elementwise work
(norms, activations, rotary embeddings, residual adds) is not counted; it is well under 1% of a
decode step. fvcore has no rule for ``scaled_dot_product_attention``, which HF's SDPA attention
calls; ``_sdpa`` adds it. A skipped FFN counts zero (the engine does not run it); the cosine
check of ``ffnskip`` is two d-long dot products per checked layer, also uncounted.

A mixture-of-experts block is counted from its weights, not traced (HF runs its experts through
grouped paths fvcore's trace misses): per token, the router's and the shared experts' matrices
whole, and ``num_experts_per_tok`` of the n experts' stacked matrices ([n, out, in]): the
active parameters.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn
from transformers import DynamicCache

from ..skip.adapters import ffn_sites
from ..skip.engine import generation_stats
from ..skip.hf_compat import cache_keyword
from ..skip.naming import DENSE, config_name
from ..skip.policy import ALWAYS
from ..skip.rules import known_traits, rule_class
from ..skip.settings import SkipPolicy
from .options import FlopsOptions

# config fields that give a mixture of experts' expert count
EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts")
CONVENTION = (
    "multiply-accumulates of matrix products (fvcore: one multiply-add = one flop); "
    "elementwise ops not counted"
)


def _sdpa(inputs: list[Any], outputs: list[Any]) -> Counter:
    """fvcore handle for ``aten::scaled_dot_product_attention``: QK^T plus AV."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    *batch, lq, d = q
    heads = 1
    for n in batch:
        heads *= n
    return Counter({"scaled_dot_product_attention": heads * lq * k[-2] * (d + v[-1])})


@dataclass(frozen=True)
class DecodeFlops:
    """FLOPs of one decoding step of one token, by part."""

    context: int  # positions the new token attends to (its own included)
    attention: int  # projections and attention products, all layers
    ffn: int  # FFN blocks, all layers
    lm_head: int
    other: int
    ffn_per_layer: tuple[int, ...]
    attention_per_layer: tuple[int, ...]

    @property
    def total(self) -> int:
        return self.attention + self.ffn + self.lm_head + self.other

    def skipping(self, layer_skip_frequency: list[float], whole_layers: bool = False) -> DecodeFlops:
        """The same step when layer i's FFN (``whole_layers``: its attention too) is skipped for a
        share ``layer_skip_frequency[i]`` of tokens."""
        freq = layer_skip_frequency
        ffn = tuple(round(f * (1 - s)) for f, s in zip(self.ffn_per_layer, freq, strict=True))
        attn = self.attention_per_layer
        if whole_layers:
            attn = tuple(round(a * (1 - s)) for a, s in zip(attn, freq, strict=True))
        return DecodeFlops(self.context, sum(attn), sum(ffn), self.lm_head, self.other, ffn, attn)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


class _Step(nn.Module):
    """One decoding step against a prefilled cache, as a module fvcore can trace."""

    def __init__(self, model: nn.Module, cache: DynamicCache) -> None:
        super().__init__()
        self.model, self.cache = model, cache

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(
            input_ids=input_ids, use_cache=True, **{cache_keyword(self.model): self.cache}
        ).logits


@torch.no_grad()
def decode_flops(model: nn.Module, context: int) -> DecodeFlops:
    """Count one decoding step of a batch-1 token attending to ``context`` positions."""
    if context < 2:
        raise ValueError(f"context={context} is out of range: it must be >= 2")
    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (1, context), device=device)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:, :-1], use_cache=True, **{cache_keyword(model): cache})
    step = _Step(model, cache)
    analysis = FlopCountAnalysis(step, (ids[:, -1:],)).set_op_handle(
        "aten::scaled_dot_product_attention", _sdpa
    )
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    names = {id(m): name for name, m in step.named_modules()}
    by_module = analysis.by_module()
    _, sites = ffn_sites(model)
    traced = [
        sum(by_module[names[id(m)]] for m in (s.mlp, s.in_norm, s.out_norm) if m is not None) for s in sites
    ]
    active = [active_expert_flops(s.mlp, model.config) for s in sites]
    if all(a is None for a in active) and any(getattr(model.config, n, None) for n in EXPERT_COUNTS):
        raise NotImplementedError(
            f"{model.config.model_type}: its expert blocks keep no stacked [n, out, in] expert weights "
            "in this transformers release, so ffnskip flops cannot count their active experts (fvcore's "
            "trace would report the router alone)"
        )
    ffn = [t if a is None else a for t, a in zip(traced, active, strict=True)]
    attention = [by_module[names[id(s.attention)]] for s in sites]
    lm_head = by_module[names[id(model.get_output_embeddings())]]
    other = analysis.total() - sum(attention) - sum(traced) - lm_head
    return DecodeFlops(context, sum(attention), sum(ffn), lm_head, other, tuple(ffn), tuple(attention))


def active_expert_flops(block: nn.Module, config: Any) -> int | None:
    """One token's multiply-adds in ``block`` if it is a mixture of experts (the stacked experts'
    matrices, [n, out, in], ``num_experts_per_tok`` of n; every other matrix, router and shared
    experts, whole), else None (a dense block, which fvcore counts)."""
    stacked = [p for p in block.parameters() if p.dim() == 3]
    if not stacked:
        return None
    routed = sum(p.numel() // p.shape[0] for p in stacked) * int(config.num_experts_per_tok)
    return routed + sum(p.numel() for p in block.parameters() if p.dim() == 2)


def analytic_decode_flops(config: Any, context: int) -> int | None:
    """The same count from the config alone (Llama / Mistral / Qwen / Gemma layouts: q, k, v, o
    projections, gated FFN of three matrices, sliding-window layers attending to at most the
    window, untied or tied LM head); None for a mixture of experts."""
    if any(getattr(config, name, None) for name in EXPERT_COUNTS):
        return None
    d, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    types = getattr(config, "layer_types", None) or ["full_attention"] * layers
    window = getattr(config, "sliding_window", None) or context
    total = 0
    for kind in types:
        span = min(context, window) if kind == "sliding_attention" else context
        total += d * q + 2 * d * kv + q * d  # projections
        total += config.num_attention_heads * span * head_dim * 2  # QK^T and AV
        total += 3 * d * config.intermediate_size  # gate, up, down
    return total + d * config.vocab_size


def skip_frequency(model: nn.Module, batch: dict, policy: SkipPolicy, new_tokens: int) -> list[float]:
    """Per layer, the share of eligible tokens whose FFN ``policy`` skipped in a greedy generation."""
    frequency = generation_stats(model, batch, policy, new_tokens)["layer_skip_frequency"]
    if frequency is None:
        raise ValueError(f"no token was eligible in {new_tokens} new tokens with warmup={policy.warmup}")
    return frequency


def results_frequency(results: dict[str, Any]) -> tuple[list[float], bool]:
    """The per-layer skip frequency an lm-eval results JSON of ``--model ffnskip`` recorded, and
    whether its method skips whole layers."""
    info = results.get("config", {}).get("ffnskip")
    if not info:
        raise ValueError("not the results of an lm-eval run with --model ffnskip")
    frequency = info["stats"]["layer_skip_frequency"]
    if frequency is None:
        raise ValueError("no token of that run was eligible for skipping")
    rule = info.get("rule") or known_traits(info.get("policy", {}).get("method", "ffnskip"))
    return frequency, bool(rule["skips_layers"])


def run_flops(options: FlopsOptions) -> dict[str, Any]:
    """``ffnskip flops``: one decoding step's FLOPs split by part, dense and for the skip pattern of
    each method x target (a greedy generation on the options' device) and of each lm-eval
    ``results`` file; ``shape`` instead of ``pretrained`` counts a shipped architecture with random
    weights (``thin``: its thin widths), whose ffnskip fires at its first check, as ``ffnskip
    bench`` runs it."""
    options.check()  # before anything loads
    import json

    from ..inputs.checkpoints import load, torch_device
    from ..skip.provenance import versions
    from .bench_configs import prompt_batch
    from .calibrate import with_calibration
    from .shapes import shape_model, token_batch

    patterns: dict[str, tuple[list[float], bool]] = {}
    for source in map(Path, options.results):
        try:
            patterns[source.name] = results_frequency(json.loads(source.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{source}: {err}") from err
    threshold = options.threshold
    if options.shape is not None:
        device = torch_device(options.device)
        model, tokenizer = shape_model(options.shape, torch.float32, device, thin_widths=options.thin), None
        batch, threshold = token_batch(model.config.vocab_size, 1, model.device), ALWAYS
    else:
        model, tokenizer = load(options.pretrained, options.device)
        batch = prompt_batch(tokenizer, 1, model.device)
    dense = decode_flops(model, options.context)
    for method in options.methods:
        for target in map(float, options.targets):
            policy = SkipPolicy(method=method, target_skip=target, threshold=threshold, warmup=0)
            if tokenizer is not None:
                policy = with_calibration(policy, model, tokenizer)
            frequency = skip_frequency(model, batch, policy, options.new_tokens)
            patterns[config_name(method, target)] = (frequency, rule_class(method).skips_layers)
    rows = [{"config": DENSE, "skip": 0.0, **dense.as_dict()}] + [
        {"config": name, "skip": sum(f) / len(f), **dense.skipping(f, whole).as_dict()}
        for name, (f, whole) in patterns.items()
    ]
    return {
        "model": options.pretrained
        if options.shape is None
        else f"shape:{options.shape}{'-thin' if options.thin else ''}",
        "device": options.device,
        "context": options.context,
        "convention": CONVENTION,
        "analytic_dense_total": analytic_decode_flops(model.config, options.context),
        "versions": versions(),
        "rows": rows,
    }
