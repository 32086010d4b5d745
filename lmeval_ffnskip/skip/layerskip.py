"""The layer-skip baselines of the paper's Table 2: whole decoder layers (attention and FFN) skipped.

- ``shortgpt`` (Men et al., 2024): the n layers with the lowest Block Influence,
  BI_i = 1 - mean cos(x_i, x_i+1) of a layer's input and output over calibration text, are
  dropped: they never run, for any token, prompt included, as in a pruned model.
- ``skipdecode`` (Del Corro et al., 2023): one batch-wide schedule per decoding step. After
  ``warmup`` steps, step t bypasses the s_t layers that follow the first ``cold_start`` ("warm-up
  layers"), with s_t growing linearly from 0 to 2n over ``horizon`` steps (mean n) and staying
  there; the top layers keep running. Because s_t never shrinks, a bypassed layer never runs
  again, so no later token needs the KV it did not write and the cache is never recomputed
  (SkipDecode's point). Prompt passes run in full; with ``skip_prompt`` (teacher forcing:
  loglikelihood tasks, ``ffnskip fidelity``) a token's step is its position instead.

n matches the compute ``target_skip`` of the FFNs would save: n = round(target_skip *
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

from .adapters import ffn_sites
from .hf_compat import PassTokens
from .hooks import Patches
from .policy import LayerLayout, SkipPolicy, StepCounter
from .stats import RowCount, RowLedger, SkipStats


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
    """Which layers a layer-skip method skips: ``order`` in the order they go, ``per_token`` (n)
    the number skipped per eligible token (skipdecode: the mean over its first ``horizon`` steps),
    ``ffn_share`` the FFN's share of a layer's weight matrices (a layer is 1 / ffn_share FFNs)."""

    method: str
    per_token: int
    order: tuple[int, ...]
    ffn_share: float

    def counts(self, since: torch.Tensor, policy: SkipPolicy) -> torch.Tensor:
        """Layers skipped (the first ``counts`` of ``order``) by tokens ``since`` steps from where
        warm-up counting starts (0: the first generated token, or position 0 with skip_prompt)."""
        if self.method == "shortgpt":
            return torch.full_like(since, len(self.order))
        grown = (since - policy.warmup + 1).clamp(0, policy.horizon)
        return torch.round(2 * self.per_token * grown / policy.horizon).long()


def plan(model: nn.Module, policy: SkipPolicy) -> tuple[LayerLayout, LayerPlan]:
    """The layout (cold layers, n as ``k``) and the layer plan of ``policy`` on ``model``."""
    decoder, sites = ffn_sites(model)
    n_layers = len(sites)
    share = ffn_share(decoder.layers[0], sites[0].mlp)
    layout = policy.layout(n_layers)
    n = round(policy.target_skip * n_layers * share)
    layout = dataclasses.replace(layout, k=n)
    protected = mask_layers(model.config, n_layers)
    if policy.method == "shortgpt":
        if policy.influence is None or len(policy.influence) != n_layers:
            raise ValueError(
                "method=shortgpt needs the Block Influence of each layer of this model on "
                "calibration text: with --model ffnskip it is measured once and cached; from Python use "
                "calibrate.with_calibration(policy, model, tokenizer)"
            )
        candidates = sorted(
            (i for i in range(n_layers) if i not in protected), key=policy.influence.__getitem__
        )
        order, room = tuple(sorted(candidates[:n])), len(candidates)
    else:
        order = tuple(i for i in layout.mid if i not in protected)
        room = len(order) // 2
    if n > room:
        where = (
            f"of the layers other than {sorted(protected)} (they size the attention masks)"
            if policy.method == "shortgpt"
            else f"with cold_start={layout.cold_start}, cold_end={layout.cold_end} (2n must fit between)"
        )
        raise ValueError(
            f"target_skip={policy.target_skip} matches {n} of {n_layers} whole layers per token "
            f"(FFN share of a layer {share:.2f}), but method={policy.method} can skip at most {room} "
            f"{where}; lower target_skip"
        )
    return layout, LayerPlan(policy.method, n, order, share)


class LayerSkipEngine:
    """Hooks for a layer-skip method: same interface as ``SkipEngine`` (``layout``, ``stats``,
    ``history``, ``install``/``remove``). A layer every token of a pass skips returns its input
    without running. Where only some tokens of a pass skip it (skipdecode with ``skip_prompt``:
    teacher forcing), it runs and those tokens keep their input: exact (a token that runs a
    layer only attends to earlier positions, and those ran it too), not faster."""

    def __init__(self, model: nn.Module, policy: SkipPolicy, record: bool = False) -> None:
        self.policy = policy
        self.decoder, self.sites = ffn_sites(model)
        self.layout, self.plan = plan(model, policy)
        self.stats = SkipStats(len(self.sites))
        self.history: list[torch.Tensor] | None = [] if record else None
        self.ledger: RowLedger | None = None  # per-row counts of a batched generation, while open
        self.steps = StepCounter(policy.skip_prompt)
        self._skipped: frozenset[int] = frozenset()
        self._partial: dict[int, torch.Tensor] = {}  # layer -> [batch, length, 1] tokens skipping it
        self._patches = Patches()

    def install(self) -> None:
        """Hook the decoder stack and wrap the forward of each layer the plan can skip."""
        layers = self.decoder.layers
        if any("forward" in vars(layer) for layer in layers):
            raise RuntimeError("this model already has a skip engine attached; detach it first")
        self._patches.own(self.decoder, self)
        self._patches.hook(self.decoder.register_forward_pre_hook(self._begin, with_kwargs=True))
        for i in self.plan.order:
            self._patches.patch(layers[i], partial(self._layer, i, layers[i].forward))

    def remove(self) -> None:
        """Undo ``install``."""
        self._patches.remove()

    def _begin(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        tokens = PassTokens.read(args, kwargs)
        shape = (tokens.batch, tokens.length)
        since = torch.tensor(self.steps.since(tokens)).view(shape)
        real = torch.tensor(tokens.real).view(shape)
        counts = self.plan.counts(since, self.policy)
        top = int(counts[real].max()) if real.any() else 0
        counts = torch.where(real, counts, top)  # padding goes along with the most skipping token
        low = int(counts.min())
        order = self.plan.order
        self._skipped = frozenset(order[:low])
        device = next(self.decoder.parameters()).device
        self._partial = {order[r]: (counts > r)[..., None].to(device) for r in range(low, top)}
        eligible = real if self.plan.method == "shortgpt" else real & (since >= self.policy.warmup)
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
        index: int,
        forward: Callable[..., torch.Tensor],
        hidden_states: torch.Tensor,
        *args: object,
        **kwargs: object,
    ) -> torch.Tensor:
        if index in self._skipped:
            return hidden_states
        out = forward(hidden_states, *args, **kwargs)
        bypass = self._partial.get(index)
        return out if bypass is None else torch.where(bypass, hidden_states, out)


@torch.no_grad()
def block_influence(model: nn.Module, batch: dict[str, torch.Tensor]) -> list[float]:
    """ShortGPT's Block Influence of every decoder layer: 1 - mean cos(input, output) over the
    real tokens of ``batch``."""
    decoder, sites = ffn_sites(model)
    real = batch["attention_mask"].bool()
    sums = [0.0] * len(sites)
    inputs: dict[int, torch.Tensor] = {}

    def keep(i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            inputs[i] = args[0] if args else kwargs["hidden_states"]

        return hook

    def measure(i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
            cos = torch.cosine_similarity(inputs.pop(i).float(), out.float(), dim=-1)
            sums[i] += float(cos[real].sum())

        return hook

    handles = []
    for i, layer in enumerate(decoder.layers):
        handles.append(layer.register_forward_pre_hook(keep(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(measure(i), with_kwargs=True))
    try:
        model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    count = int(real.sum())
    return [1.0 - s / count for s in sums]
