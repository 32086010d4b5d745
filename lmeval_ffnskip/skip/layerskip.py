"""The engine of the layer-skip rules (``rule.LayerRule``; the built-ins ``shortgpt`` and
``skipdecode``, the baselines of the paper's Table 2): whole decoder layers, attention and FFN,
skipped per token.

A rule's n matches the compute ``target_skip`` of the FFNs would save: n = round(target_skip *
n_layers * ffn_share), where ffn_share is the FFN's share of a layer's weight matrices (its share
of a decoding step's matmul FLOPs). Layers whose cache HF reads to size attention masks (the
first layer, the first full-attention and the first sliding-window layer) always run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .adapters import FFNSite, ffn_sites
from .hf_compat import PassTokens
from .hooks import Patches
from .layout import LayerLayout
from .rule import LayerRule
from .settings import SkipPolicy
from .stats import RowCount, RowLedger, SkipStats
from .steps import StepCounter


def ffn_share(layer: nn.Module, mlp: nn.Module) -> float:
    """The FFN's share of a decoder layer's weight matrices (norm vectors left out)."""

    def matrices(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters() if p.dim() >= 2)

    return matrices(mlp) / matrices(layer)


def mask_layers(config: object, n_layers: int) -> set[int]:
    """Layers whose KV cache HF uses to size the attention masks and positions."""
    kinds = getattr(config, "layer_types", None) or ["full_attention"] * n_layers
    first = {kind: kinds.index(kind) for kind in ("full_attention", "sliding_attention") if kind in kinds}
    return {0, *first.values()}


@dataclass(frozen=True)
class LayerPlan:
    """Which layers a layer-skip rule skips: ``order`` in the order they go, ``ffn_share`` the
    FFN's share of a layer's weight matrices (a layer is 1 / ffn_share FFNs)."""

    order: tuple[int, ...]
    ffn_share: float


def plan(model: nn.Module, policy: SkipPolicy) -> tuple[LayerRule, LayerPlan]:
    """``policy``'s rule on ``model`` (its layout's ``k``: n, the layers skipped per token) and
    the layer plan."""
    _, sites = ffn_sites(model)
    n_layers = len(sites)
    share = ffn_share(sites[0].layer, sites[0].mlp)
    n = round(policy.target_skip * n_layers * share)
    layout: LayerLayout = dataclasses.replace(policy.layout(n_layers), k=n)
    rule = policy.rule(policy, layout, frozenset(mask_layers(model.config, n_layers)))
    if n > rule.limit:
        raise ValueError(
            f"target_skip={policy.target_skip} matches {n} of {n_layers} whole layers per token "
            f"(FFN share of a layer {share:.2f}), but method={policy.method} can skip at most {rule.limit} "
            f"{rule.where}; lower target_skip"
        )
    return rule, LayerPlan(rule.order, share)


class LayerSkipEngine:
    """Hooks for a layer-skip rule (an ``hooks.Engine``). A layer every token of a pass skips
    returns its input without running. Where only some tokens of a pass skip it (skipdecode with
    ``skip_prompt``: teacher forcing), it runs and those tokens keep their input: exact (a token
    that runs a layer only attends to earlier positions, and those ran it too), not faster."""

    def __init__(self, model: nn.Module, policy: SkipPolicy, record: bool = False) -> None:
        self.policy = policy
        self.decoder, self.sites = ffn_sites(model)
        self.rule, self.plan = plan(model, policy)
        self.layout = self.rule.layout
        self.stats = SkipStats(len(self.sites))
        self.history: list[torch.Tensor] | None = [] if record else None
        self.ledger: RowLedger | None = None  # per-row counts of a batched generation, while open
        self.steps = StepCounter(policy.skip_prompt)
        self._skipped: frozenset[int] = frozenset()
        self._partial: dict[int, torch.Tensor] = {}  # layer -> [batch, length, 1] tokens skipping it
        # whether a layer returns a tuple, hidden states first (Falcon's; GPT-J's before transformers
        # 5.25), as layer 0 returned it this pass: it always runs (``mask_layers``), before any skip
        self._tuple_out = False
        self._patches = Patches()

    def install(self) -> None:
        """Hook the decoder stack and wrap the forward of each layer the plan can skip."""
        if any("forward" in vars(site.layer) for site in self.sites):
            raise RuntimeError("this model already has a skip engine attached; detach it first")
        self._patches.own(self.decoder, self)
        self._patches.hook(self.decoder.register_forward_pre_hook(self._begin, with_kwargs=True))
        self._patches.hook(self.sites[0].layer.register_forward_hook(self._output_form))
        for i in self.plan.order:
            layer = self.sites[i].layer
            self._patches.patch(layer, partial(self._layer, self.sites[i], layer.forward))

    def remove(self) -> None:
        """Undo ``install``."""
        self._patches.remove()

    def _output_form(self, module: nn.Module, args: tuple, out: torch.Tensor | tuple) -> None:
        self._tuple_out = isinstance(out, tuple)

    def _begin(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        tokens = PassTokens.read(args, kwargs)
        shape = (tokens.batch, tokens.length)
        since = torch.tensor(self.steps.since(tokens)).view(shape)
        real = torch.tensor(tokens.real).view(shape)
        counts = self.rule.counts(since)
        top = int(counts[real].max()) if real.any() else 0
        counts = torch.where(real, counts, top)  # padding goes along with the most skipping token
        low = int(counts.min())
        order = self.plan.order
        self._skipped = frozenset(order[:low])
        device = next(self.decoder.parameters()).device
        self._partial = {order[r]: (counts > r)[..., None].to(device) for r in range(low, top)}
        eligible = self.rule.eligible(since, real)
        stats = self.stats
        stats.add_tokens(int(real.sum()), int(eligible.sum()), int(counts[real].sum()), 0)
        if self.ledger is not None:
            self.ledger.add(self._row_counts(counts, real, eligible))
        if eligible.any():
            stats.passes += 1
            stats.skipped_by_all += low  # the layers no token of the pass runs
        for r in range(top):
            stats.layer_skipped[order[r]] += int((counts[real] > r).sum())
        if self.history is not None:
            mark = torch.zeros(tokens.batch, tokens.length, len(self.sites), dtype=torch.bool)
            for r, layer in enumerate(order[:top]):
                mark[..., layer] = counts > r
            self.history.append(mark & real[..., None])

    def _row_counts(self, counts: torch.Tensor, real: torch.Tensor, eligible: torch.Tensor) -> list[RowCount]:
        """Per batch entry, what this pass counted (``counts``: layers skipped per token)."""
        order = self.plan.order
        skips = torch.where(real, counts, 0).tolist()
        return [
            RowCount(int(r.sum()), int(e.sum()), 0, tuple(layer for c in row for layer in order[:c]))
            for row, r, e in zip(skips, real, eligible, strict=True)
        ]

    def _layer(
        self,
        site: FFNSite,
        forward: Callable[..., torch.Tensor | tuple],
        hidden_states: torch.Tensor,
        *args: object,
        **kwargs: object,
    ) -> torch.Tensor | tuple:
        """Layer ``site``: its input where skipped (in the layer's output form: with no attention
        weights where it returns a tuple), its output where run."""
        if site.index in self._skipped:
            return (hidden_states, None) if self._tuple_out else hidden_states
        out = forward(hidden_states, *args, **kwargs)
        bypass = self._partial.get(site.index)
        if bypass is None:
            return out
        if isinstance(out, tuple):
            return torch.where(bypass, hidden_states, out[0]), *out[1:]
        return torch.where(bypass, hidden_states, out)


@torch.no_grad()
def block_influence(model: nn.Module, batch: dict[str, torch.Tensor]) -> list[float]:
    """ShortGPT's Block Influence of every decoder layer: 1 - mean cos(input, output) over the
    real tokens of ``batch``."""
    _, sites = ffn_sites(model)
    real = batch["attention_mask"].bool()
    sums = [0.0] * len(sites)
    inputs: dict[int, torch.Tensor] = {}

    def keep(i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            inputs[i] = args[0] if args else kwargs["hidden_states"]

        return hook

    def measure(i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor | tuple) -> None:
            hidden = out[0] if isinstance(out, tuple) else out
            cos = torch.cosine_similarity(inputs.pop(i).float(), hidden.float(), dim=-1)
            sums[i] += float(cos[real].sum())

        return hook

    handles = []
    for i, site in enumerate(sites):
        handles.append(site.layer.register_forward_pre_hook(keep(i), with_kwargs=True))
        handles.append(site.layer.register_forward_hook(measure(i), with_kwargs=True))
    try:
        model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    count = int(real.sum())
    return [1.0 - s / count for s in sums]
