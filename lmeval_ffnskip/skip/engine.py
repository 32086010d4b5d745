"""Run a stock HF decoder with FFN blocks skipped per token, as the policy decides.

``attach(model, policy)`` hooks the model in place and undoes it on exit:

- a pre-hook on the decoder stack works out, per forward pass, which tokens are real,
  their positions, and which are eligible (the rule's ``eligible``), and asks the rule for the
  pass's record of decisions (``begin``; the contract: ``rule.py``);
- in the layers the rule can touch (its ``checked`` / ``skippable``; no other layer is hooked),
  the FFN block's modules are wrapped: the input norm keeps the residual stream ``h`` where
  similarity is measured; ``mlp`` gives rows that skip a zero output (so the
  layer's ``h + out`` is exactly ``h``) and never feeds them to the FFN, gathering the rows
  that run when only some do; when every row skips, the norms around the FFN do not run
  either. After the FFN, the similarity of ``h`` and ``h + out`` is measured for the tokens
  still looking for their trigger. In a parallel layer (attention and the block read the same
  input) ``h`` is the layer's input plus attention's output, kept by a wrapped attention input
  norm and a hook on attention, and a skipped block drops the block's term alone.

A pass with no eligible token (prompt, warm-up) goes straight through the stock modules.
Attention is untouched, so every layer's KV cache holds every position. The only host
reads are the trigger decisions, each read at the next hooked layer's FFN input norm, after
that layer's attention has been queued, so on a GPU the read overlaps attention work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

from .adapters import FFNSite, ffn_sites
from .hf_compat import IncompatibleTransformers, PassTokens
from .hooks import Engine, Patches, attached_engine, installed, unchanged
from .layerskip import LayerSkipEngine
from .rows import PassSkips
from .rule import FFNRule
from .settings import SkipPolicy
from .stats import RowLedger, SkipStats, unskipped_rows
from .steps import StepCounter


class SkipEngine:
    """Hooks, per-pass decisions and counters of an FFN rule for one attached model (an
    ``hooks.Engine``)."""

    def __init__(self, model: nn.Module, policy: SkipPolicy, record: bool = False) -> None:
        self.policy = policy
        self.decoder, self.sites = ffn_sites(model)
        self.layout = policy.layout(len(self.sites))
        self.rule: FFNRule = policy.rule(policy, self.layout)
        self.stats = SkipStats(len(self.sites))
        self.history: list[torch.Tensor] | None = [] if record else None
        self.ledger: RowLedger | None = None  # per-row counts of a batched generation, while open
        self._pass: PassSkips | None = None  # this pass's decisions, for the counters
        self._decisions: PassSkips | None = None  # the same, while there are decisions to make
        self._tokens: PassTokens | None = None
        self.steps = StepCounter(policy.skip_prompt)
        self._h: torch.Tensor | None = None
        self._attention: torch.Tensor | None = None  # a parallel layer's attention output
        self._pending: tuple[int, list[int], torch.Tensor, torch.cuda.Event | None] | None = None
        self._zero: torch.Tensor | None = None
        self._zero_version = 0
        self._patches = Patches()

    # -- install / remove -------------------------------------------------------------
    def install(self) -> None:
        """Hook the model (in place): the decoder stack, and only the layers the rule can touch."""
        modules = [m for site in self.sites for m in (site.mlp, site.in_norm) if m is not None]
        if any("forward" in vars(m) for m in modules):
            raise RuntimeError("this model already has a skip engine attached; detach it first")
        patches = self._patches
        patches.own(self.decoder, self)
        patches.hook(self.decoder.register_forward_pre_hook(self._begin, with_kwargs=True))
        patches.hook(self.decoder.register_forward_hook(self._end))
        checked, skippable = self.rule.checked, self.rule.skippable
        for site in self.sites:
            if site.index in checked or site.index in skippable:
                if site.in_norm is not None:
                    patches.patch(site.in_norm, partial(self._ffn_input, site, site.in_norm.forward))
                patches.patch(site.mlp, partial(self._ffn, site, site.mlp.forward))
                if site.parallel is not None and site.index in checked:
                    patches.patch(site.parallel, partial(self._layer_input, site.parallel.forward))
                    patches.hook(site.attention.register_forward_hook(self._attention_output))
                if site.out_norm is not None:
                    patches.patch(site.out_norm, partial(self._ffn_output, site, site.out_norm.forward))

    def remove(self) -> None:
        """Undo ``install``."""
        self._patches.remove()

    def reset(self) -> None:
        """Fresh counters and warm-up counting, as a new engine has."""
        self.stats = SkipStats(len(self.sites))
        self.steps = StepCounter(self.policy.skip_prompt)

    # -- per forward pass -------------------------------------------------------------
    def _begin(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        tokens = PassTokens.read(args, kwargs)
        eligible = self.rule.eligible(self.steps.since(tokens), tokens.real)
        self._tokens = tokens
        # a pass with nothing eligible (prompt, warm-up), or whose rule can decide nothing
        # (threshold above 1, no budget), runs the stock layers straight through
        self._pass = self._decisions = None
        if any(eligible):
            self._pass = self.rule.begin(eligible, tokens.pos)
            self._decisions = None if self._pass.idle() else self._pass

    def _end(self, module: nn.Module, args: tuple, output: object) -> None:
        decisions, self._pass, self._decisions = self._pass, None, None
        self._h = self._attention = None
        if decisions is not None:
            self._resolve(decisions)
        self.record_pass(self._tokens, decisions)

    def record_pass(self, tokens: PassTokens, decisions: PassSkips | None) -> None:
        """Count one pass of ``tokens`` with its settled ``decisions`` (None: nothing eligible)
        into the stats, the ledger and the history (the compiled path's steps come here too)."""
        stats = self.stats
        shape = (tokens.batch, tokens.length)
        if decisions is None:
            stats.add_tokens(sum(tokens.real), 0, 0, 0)
            if self.ledger is not None:
                self.ledger.add(unskipped_rows(tokens.real, tokens.length))
            if self.history is not None:
                self.history.append(torch.zeros(*shape, self.layout.n_layers, dtype=torch.bool))
            return
        stats.add_tokens(
            sum(tokens.real), decisions.n_eligible, sum(decisions.skip_count), decisions.never_fired()
        )
        stats.passes += 1
        stats.skipped_by_all += decisions.skip_count.count(decisions.n)
        stats.layer_skipped = [a + b for a, b in zip(stats.layer_skipped, decisions.skip_count, strict=True)]
        if self.ledger is not None:
            self.ledger.add(decisions.row_counts(tokens.length, tokens.real))
        if self.history is not None:
            self.history.append(decisions.mask().view(*shape, -1))

    # -- per layer ----------------------------------------------------------------------
    def _layer_input(self, forward: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """A parallel layer's attention input norm: keep the layer's input ``h``; it always runs."""
        if self._decisions is not None:
            self._h = h
        return forward(h)

    def _attention_output(self, module: nn.Module, args: tuple, output: tuple) -> None:
        """A parallel layer's attention: keep its output, what it adds beside the block's."""
        if self._decisions is not None:
            self._attention = output[0]

    def _ffn_input(
        self, site: FFNSite, forward: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor
    ) -> torch.Tensor:
        """The FFN's input norm (or, where the block has none, the block's input): settle the
        queued decisions, enter the layer, keep ``h`` for the similarity check; when every row
        skips the block, return ``h`` without norming it."""
        decisions = self._decisions
        if decisions is None:  # nothing eligible in this pass, or called outside a decoder pass
            return forward(h)
        if self._pending is not None:
            self._resolve(decisions)
        decisions.enter(site.index)
        if decisions.skip_count[site.index] == decisions.n:
            return h  # the FFN will not read it
        if site.parallel is None:  # a parallel layer's h is kept at its attention input norm
            self._h = h
        return forward(h)

    def _ffn(
        self, site: FFNSite, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        decisions = self._decisions
        if decisions is None:
            return forward(x)
        if site.in_norm is None:  # the block reads h itself: its input is where the layer starts
            x = self._ffn_input(site, unchanged, x)
        layer, n = site.index, decisions.n
        n_skip = decisions.skip_count[layer]
        if n_skip == 0:
            y = forward(x)
        elif n_skip == n:
            y = torch.zeros_like(x) if site.adds_in_place else self._zeros(x)
        else:
            flat = x.reshape(n, 1, -1)  # one token a row, [rows, 1, d] as every block takes it
            keep = decisions.kept(layer).to(x.device, non_blocking=True)
            out = forward(flat.index_select(0, keep))
            y = flat.new_zeros(n, 1, out.shape[-1]).index_copy_(0, keep, out).view_as(x)
        if site.out_norm is None and decisions.checks_at(layer):
            self._measure(site, decisions, y)
        return y

    def _zeros(self, like: torch.Tensor) -> torch.Tensor:
        """The output of a block every row skips: one zero tensor kept while shapes stay the same
        (a skipped layer then costs no fill). A layer that wrote into it in place is refused."""
        zero = self._zero
        if zero is None or zero.shape != like.shape or zero.dtype != like.dtype or zero.device != like.device:
            zero = self._zero = torch.zeros_like(like)
            self._zero_version = zero._version
        elif zero._version != self._zero_version:
            raise IncompatibleTransformers(
                "a decoder layer wrote into the FFN block's output in place, so a skipped block's "
                "zero output cannot be reused"
            )
        return zero

    def _ffn_output(
        self, site: FFNSite, forward: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor
    ) -> torch.Tensor:
        """The FFN's output norm (Gemma): a block every row skips is zero and stays zero; the
        similarity is measured on the normed output, the block's contribution to ``h``."""
        decisions = self._decisions
        if decisions is None:
            return forward(y)
        if decisions.skip_count[site.index] == decisions.n:
            return y
        block = forward(y)
        if decisions.checks_at(site.index):
            self._measure(site, decisions, block)
        return block

    def _measure(self, site: FFNSite, decisions: PassSkips, block: torch.Tensor) -> None:
        """Queue the Gram matrix of (h, block) for the rows still looking for a trigger, where
        ``block``, times the site's ``scale``, is what the FFN block adds to the residual stream ``h``
        (in a parallel layer: the layer's input plus attention's output).

        Two device ops (cat, bmm) and one small copy; the cosine and the threshold are
        worked out on the host from |h|^2, h.b and |b|^2 when the decision is needed. The record's
        ``checking`` rows are in ascending order, so when it holds all N rows none are gathered.
        """
        layer, n, rows = site.index, decisions.n, decisions.checking
        h = self._h if site.parallel is None else self._h + self._attention
        if site.scale != 1.0:
            block = block * site.scale
        if h.shape[1] != 1:  # [batch, length, d] -> one [1, d] slice per token (decoding has them)
            h, block = h.reshape(n, 1, -1), block.reshape(n, 1, -1)
        if len(rows) < n:
            idx = torch.tensor(rows).to(h.device, non_blocking=True)
            h, block = h.index_select(0, idx), block.index_select(0, idx)
        pair = torch.cat((h, block), dim=1)
        if pair.dtype != torch.float32:
            pair = pair.float()
        gram, event = to_host(torch.bmm(pair, pair.mT))
        self._pending = (layer, rows, gram, event)  # measured() replaces, never mutates, checking

    def _resolve(self, decisions: PassSkips) -> None:
        """Apply the queued trigger decisions (the one host sync of a check)."""
        if self._pending is None:
            return
        layer, rows, gram, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        self.stats.host_syncs += 1
        decisions.measured(layer, rows, [_cosine(g) for g in gram.tolist()])


def to_host(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start copying ``tensor`` to the host. On a GPU the copy is queued on the current stream of
    the GPU holding ``tensor`` (with the model split over GPUs, not necessarily the current
    device), so the event that says it has landed is recorded on that stream."""
    if not tensor.is_cuda:
        return tensor, None
    stream = torch.cuda.current_stream(tensor.device)
    host = tensor.to("cpu", non_blocking=True)
    event = torch.cuda.Event()
    event.record(stream)
    return host, event


def _cosine(gram: list[list[float]]) -> float:
    """cos(h, h + b) from the Gram matrix [[h.h, h.b], [b.h, b.b]] (0 for a zero vector)."""
    (hh, hb), (_, bb) = gram
    norms = (hh * max(hh + 2 * hb + bb, 0.0)) ** 0.5
    return (hh + hb) / norms if norms > 0 else 0.0


def checked_generate(
    engine: Engine | None, prompt_mask: torch.Tensor, run: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """``run()`` a ``generate`` call over prompts with padding mask ``prompt_mask``, and check
    that ``engine`` (None: nothing to check) saw the generation as the caller made it: one
    prefill of each row's real prompt, then one decoding pass per further token. Anything else
    means this transformers release passes the KV cache in a way the engine did not read."""
    if engine is None:
        return run()
    before = engine.steps.decoding_passes
    out = run()
    new_tokens = out.shape[1] - prompt_mask.shape[1]
    seen = engine.steps.decoding_passes - before
    if new_tokens > 1 and seen != new_tokens - 1:
        raise IncompatibleTransformers(
            f"generate made {new_tokens} tokens per row, but the skip engine saw {seen} decoding passes "
            f"(passes over a filled KV cache) instead of {new_tokens - 1}: it did not find the KV cache "
            "among the decoder's arguments, so it would have run every step as a new prompt"
        )
    read, expected = engine.steps.prompt_lengths, prompt_mask.sum(1).tolist()
    if new_tokens > 0 and read is not None and len(read) != len(expected):
        raise NotImplementedError(
            f"generate decoded {len(read)} rows for {len(expected)} prompts (beam search or "
            "num_return_sequences > 1): the skip engine supports one greedy or sampled row per prompt"
        )
    if new_tokens > 0 and read != expected:
        raise IncompatibleTransformers(
            f"the skip engine read prompt lengths {read} where the caller's attention mask has "
            f"{expected}: warm-up would be counted from the wrong position"
        )
    return out


def generate_fixed(model: nn.Module, batch: dict[str, torch.Tensor], new_tokens: int) -> torch.Tensor:
    """Greedy ``generate`` of exactly ``new_tokens`` tokens per row (EOS suppressed), as every
    measurement here decodes; checked against an attached engine (``checked_generate``)."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    with torch.no_grad():
        return checked_generate(
            attached_engine(model),
            torch.ones_like(ids) if mask is None else mask,
            partial(
                model.generate, **batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            ),
        )


def spanning(policy: SkipPolicy, new_tokens: int) -> SkipPolicy:
    """``policy`` for a generation of ``new_tokens``: skipdecode's schedule spans its decoding
    steps (the prefill emits the first token), so the run's mean is the per-token count."""
    return dataclasses.replace(policy, horizon=max(new_tokens - 1, 1))


def generation_stats(
    model: nn.Module, batch: dict[str, torch.Tensor], policy: SkipPolicy, new_tokens: int
) -> dict[str, object]:
    """``SkipStats.summary()`` of one ``generate_fixed`` run with ``policy`` attached."""
    with attach(model, spanning(policy, new_tokens)) as engine:
        generate_fixed(model, batch, new_tokens)
    return engine.stats.summary()


def make_engine(model: nn.Module, policy: SkipPolicy, record: bool = False) -> Engine:
    """The engine for ``policy``'s rule (not yet installed): FFN skipping, or whole layers."""
    if policy.rule.skips_layers:
        return LayerSkipEngine(model, policy, record=record)
    return SkipEngine(model, policy, record=record)


@contextmanager
def attach(model: nn.Module, policy: SkipPolicy, record: bool = False) -> Iterator[Engine]:
    """Skip FFNs (or layers) in ``model`` inside the block; yields the engine (``.stats``, ``.history``)."""
    with installed(make_engine(model, policy, record=record)) as engine:
        yield engine
