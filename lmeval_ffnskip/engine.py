"""Run a stock HF decoder with FFN blocks skipped per token, as the policy decides.

``attach(model, policy)`` hooks the model in place and undoes it on exit:

- a pre-hook on the decoder stack works out, per forward pass, which tokens are real,
  their positions, and which are eligible (``policy.py``);
- a pre-hook on each FFN input norm keeps the residual stream ``h``;
- each ``mlp.forward`` is wrapped: rows that skip get a zero FFN output (so the layer's
  ``h + out`` is exactly ``h``) and are never fed to the FFN; rows that run are gathered
  when only some do. After the FFN, the similarity of ``h`` and ``h + out`` is measured for
  the tokens still looking for their trigger.

Attention is untouched, so every layer's KV cache holds every position. The only host
reads are the trigger decisions, and each is read at the next layer's FFN, after that
layer's attention has been queued, so on a GPU the read overlaps attention work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import FFNSite, ffn_sites
from .policy import RANDOM_METHODS, RandomDraws, SkipPolicy, TokenRule
from .stats import SkipStats


class SkipEngine:
    """Hooks, per-pass decisions and counters for one attached model."""

    def __init__(self, model: nn.Module, policy: SkipPolicy, record: bool = False) -> None:
        self.policy = policy
        self.decoder, self.sites = ffn_sites(model)
        self.layout = policy.layout(len(self.sites))
        self.stats = SkipStats(len(self.sites))
        self.history: list[torch.Tensor] | None = [] if record else None
        self._draws = RandomDraws(policy, self.layout) if policy.method in RANDOM_METHODS else None
        self._rule: TokenRule | None = None
        self._shape: tuple[int, int] = (0, 0)
        self._real = 0
        self._prompt_len: torch.Tensor | None = None
        self._h: torch.Tensor | None = None
        self._pending: tuple[int, torch.Tensor, torch.Tensor, torch.cuda.Event | None] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # -- install / remove -------------------------------------------------------------
    def install(self) -> None:
        """Hook the model (in place)."""
        if any("forward" in vars(site.mlp) for site in self.sites):
            raise RuntimeError("this model already has a skip engine attached; detach it first")
        self._handles.append(self.decoder.register_forward_pre_hook(self._begin, with_kwargs=True))
        self._handles.append(self.decoder.register_forward_hook(self._end))
        if self.policy.method == "dense":
            return
        for site in self.sites:
            self._handles.append(site.in_norm.register_forward_pre_hook(self._keep_residual))
            site.mlp.forward = partial(self._ffn, site, site.mlp.forward)

    def remove(self) -> None:
        """Undo ``install``."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for site in self.sites:
            vars(site.mlp).pop("forward", None)

    # -- per forward pass -------------------------------------------------------------
    def _begin(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ref = kwargs.get("input_ids", args[0] if args else None)
        if ref is None:
            ref = kwargs["inputs_embeds"]
        batch, length = ref.shape[:2]
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None else 0
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            m = mask.to("cpu", torch.long)
            real = m[:, -length:].bool()
            pos = m.cumsum(1)[:, -length:] - 1
            before = m[:, : m.shape[1] - length].sum(1)
        else:
            real = torch.ones(batch, length, dtype=torch.bool)
            pos = (past + torch.arange(length)).expand(batch, length)
            before = torch.full((batch,), past)
        if past == 0 or self._prompt_len is None or len(self._prompt_len) != batch:
            self._prompt_len = real.sum(1) if past == 0 else before
        since = pos if self.policy.skip_prompt else pos - self._prompt_len[:, None]
        eligible = self.policy.eligible(since, real).reshape(-1)
        positions = pos.clamp(min=0).reshape(-1)
        self._rule = TokenRule(self.policy, self.layout, eligible, positions, self._draws)
        self._shape, self._real = (batch, length), int(real.sum())

    def _end(self, module: nn.Module, args: tuple, output: object) -> None:
        rule = self._rule
        if rule is None:
            return
        self._resolve()
        stats = self.stats
        stats.tokens += self._real
        stats.eligible += int(rule.eligible.sum())
        stats.skipped += sum(rule.skip_count)
        stats.never_fired += rule.never_fired()
        stats.layer_skipped = [a + b for a, b in zip(stats.layer_skipped, rule.skip_count, strict=True)]
        if self.history is not None:
            self.history.append(rule.skip.view(*self._shape, -1))
        self._rule, self._h = None, None

    # -- per layer ----------------------------------------------------------------------
    def _keep_residual(self, module: nn.Module, args: tuple) -> None:
        self._h = args[0]

    def _ffn(
        self, site: FFNSite, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        rule = self._rule
        if rule is None:  # called outside a decoder pass
            return forward(x)
        self._resolve()
        layer, n = site.index, rule.eligible.numel()
        n_skip = rule.skip_count[layer]
        if n_skip == 0:
            y = forward(x)
        elif n_skip == n:
            y = torch.zeros_like(x)
        else:
            flat = x.reshape(n, -1)
            keep = (~rule.skip[:, layer]).nonzero().squeeze(1).to(x.device, non_blocking=True)
            out = forward(flat.index_select(0, keep))
            y = flat.new_zeros(n, out.shape[-1]).index_copy_(0, keep, out).view_as(x)
        if rule.checks_at(layer):
            self._measure(site, rule, y)
        return y

    def _measure(self, site: FFNSite, rule: TokenRule, y: torch.Tensor) -> None:
        """Queue cos(h, h + block) >= threshold for the tokens still looking for a trigger."""
        n = rule.eligible.numel()
        h, out = self._h.reshape(n, -1), y.reshape(n, -1)
        rows = rule.checking.nonzero().squeeze(1)
        if len(rows) < n:
            idx = rows.to(h.device, non_blocking=True)
            h, out = h.index_select(0, idx), out.index_select(0, idx)
        block = site.out_norm(out) if site.out_norm is not None else out
        hit = F.cosine_similarity(h.float(), (h + block).float(), dim=-1) >= self.policy.threshold
        event = None
        if hit.is_cuda:
            hit = hit.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self._pending = (site.index, rows, hit, event)

    def _resolve(self) -> None:
        """Apply the queued trigger decisions (the one host sync of a check)."""
        if self._pending is None:
            return
        layer, rows, hit, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        self.stats.host_syncs += 1
        self._rule.fired(layer, rows, hit)


@contextmanager
def attach(model: nn.Module, policy: SkipPolicy, record: bool = False) -> Iterator[SkipEngine]:
    """Skip FFNs in ``model`` inside the block; yields the engine (``.stats``, ``.history``)."""
    engine = SkipEngine(model, policy, record=record)
    engine.install()
    try:
        yield engine
    finally:
        engine.remove()
