"""Compiled greedy decoding over a stock HF model, gpt-fast style, with FFN skipping kept inside
the compiled step.

A static KV cache (transformers' ``StaticCache``, one per batch size and cache length, reset
between calls), an eager ``prefill`` over the stock modules, and ``decode_one_token``: one
decoder pass compiled whole (``torch.compile(fullgraph=True, dynamic=False)``, inductor), with the
rule's device form (``device.py``) deciding per layer inside it (``compiled.py``). Per step the
host does what the eager engine's pre-hook does (warm-up and eligibility: ``StepCounter``, the
rule's ``eligible``, on plain lists) and the form's ``inputs``; the step returns the logits, the
[batch, n_layers] skip mask and the rows that never fired, read after the loop and counted through
``SkipEngine.record_pass``, so the engine's stats, ledger and history are filled as the eager path
fills them. ``host_syncs`` stays 0: no decision is read back inside a step.

While a ``CompiledDecoder`` generates, the engine's own hooks are taken off the model and the
compiled path's patches put on; both are swapped back afterwards.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from transformers import StaticCache

from .compiled import BlockPatches, StepContext
from .device import MaskedPass
from .engine import SkipEngine
from .hf_compat import PassTokens, cache_keyword
from .rule import FFNRule
from .settings import SkipPolicy

CACHE_BLOCK = 256  # static caches are sized in multiples of this, so that lengths share a compile


def prefill(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, cache: StaticCache, keyword: str
) -> torch.Tensor:
    """The prompt pass over the stock modules: [batch, vocab] fp32 logits of the last position
    (positions as ``generate`` numbers them: real tokens counted, padding at 1)."""
    position = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    slots = torch.arange(ids.shape[1], device=ids.device)
    return _last_logits(model, keyword, ids, mask, position, slots, cache)


def decode_one_token(
    model: nn.Module,
    ctx: StepContext,
    keyword: str,
    token: torch.Tensor,
    position: torch.Tensor,
    slot: torch.Tensor,
    mask: torch.Tensor,
    cache: StaticCache,
    eligible: torch.Tensor,
    inputs: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoding pass: [batch, vocab] fp32 logits, [batch, n_layers] skipped blocks, [batch]
    eligible rows that never fired. ``mask`` spans the whole static cache."""
    ctx.begin(eligible, inputs)
    logits = _last_logits(model, keyword, token, mask, position, slot, cache)
    skipped, never = ctx.outcome()
    return logits, skipped, never


def _last_logits(
    model: nn.Module,
    keyword: str,
    ids: torch.Tensor,
    mask: torch.Tensor,
    position: torch.Tensor,
    slots: torch.Tensor,
    cache: StaticCache,
) -> torch.Tensor:
    """One pass of ``ids`` written at cache ``slots``: [batch, vocab] fp32 logits of the last position."""
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position,
        cache_position=slots,
        use_cache=True,
        **{keyword: cache},
    )
    return out.logits[:, -1].float()


def refusal(policy: SkipPolicy) -> str | None:
    """Why the compiled decoding path cannot run ``policy`` (read from its rule class, before any
    model loads), or None."""
    rule = policy.rule
    if not issubclass(rule, FFNRule) or rule.device is FFNRule.device:
        return (
            f"method={policy.method} has no device form, so the compiled decoding path cannot run it; "
            "supported: the FFN methods (dense, ffnskip, spread, static, random); drop compile / --compile"
        )
    if policy.skip_prompt:
        return "the compiled decoding path prefills in full: it does not take skip_prompt=true"
    return None


class CompiledDecoder:
    """The compiled decoding path of one attached ``SkipEngine``: same decisions, same counters."""

    def __init__(self, model: nn.Module, engine: SkipEngine) -> None:
        if reason := refusal(engine.policy):
            raise NotImplementedError(reason)
        form = engine.rule.device()
        if form is None:
            raise NotImplementedError(f"method={engine.policy.method}'s rule gave no device form")
        if "sliding_attention" in (getattr(model.config, "layer_types", None) or ()):
            raise NotImplementedError(
                f"{model.config.model_type}: the compiled decoding path does not take sliding-window "
                "attention layers (transformers' static sliding-window cache keeps its length as a Python "
                "int, so dynamo recompiles every step)"
            )
        self.model, self.engine, self.form = model, engine, form
        self.ctx = StepContext(form, engine.layout.n_layers)
        self.patches = BlockPatches(self.ctx, engine.sites)
        self.keyword = cache_keyword(model)
        self._step = torch.compile(_own_copy(decode_one_token), fullgraph=True, dynamic=False)
        self._caches: dict[tuple[int, int], StaticCache] = {}
        self.compile_s = 0.0  # seconds spent in calls that compiled (the first per shape)
        self._compiled: set[tuple[int, int]] = set()

    @contextmanager
    def _installed(self) -> Iterator[None]:
        self.engine.remove()
        try:
            with self.patches.installed():
                yield
        finally:
            self.engine.install()

    def _cache(self, batch: int, length: int) -> StaticCache:
        key = (batch, length)
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = StaticCache(config=self.model.config, max_cache_len=length)
        else:
            cache.reset()
        return cache

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        min_new_tokens: int = 0,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        stopping_criteria: Sequence[Callable[[torch.Tensor, torch.Tensor], object]] = (),
        clock: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Greedy decoding as HF ``generate`` does it: [batch, prompt + new] token ids. Stops
        when every row has met EOS or a criterion (each called as HF calls it: on the ids so far
        and the step's logits; True or a [batch] bool), or after ``max_new_tokens``; EOS is
        suppressed for the first ``min_new_tokens``, and a finished row gets ``pad_token_id``
        where HF pads it (EOS and a pad id given). ``clock`` (a timer's mark) is called before
        the prefill and after it and each step, on the host."""
        ids = input_ids
        batch, width = ids.shape
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask
        length = -(-(width + max_new_tokens) // CACHE_BLOCK) * CACHE_BLOCK
        cache = self._cache(batch, length)
        full = torch.cat([mask, mask.new_ones(batch, length - width)], 1)
        eos = (
            []
            if eos_token_id is None
            else [eos_token_id]
            if isinstance(eos_token_id, int)
            else list(eos_token_id)
        )
        pads = bool(eos) and pad_token_id is not None
        engine, rule = self.engine, self.engine.rule
        steps: list[tuple[PassTokens, list[bool], torch.Tensor, torch.Tensor]] = []
        with self._installed():
            prompt = PassTokens.read((), {"input_ids": ids, "attention_mask": mask})
            engine.steps.since(prompt)  # starts warm-up counting; no prompt token is eligible
            tick = clock or _no_clock
            tick()
            logits = prefill(self.model, ids, mask, cache, self.keyword)
            tick()
            engine.record_pass(prompt, None)
            before = list(engine.steps.prompt_lengths)
            out = [ids]
            unfinished = torch.ones(batch, dtype=torch.bool, device=ids.device)
            for t in range(max_new_tokens):
                if t:
                    tokens = _decoding_pass(batch, width + t - 1, [n + t - 1 for n in before])
                    eligible = rule.eligible(engine.steps.since(tokens), tokens.real)
                    logits, skipped, never = self._run(
                        out[-1], tokens, full, cache, eligible, self.form.inputs(eligible, tokens.pos)
                    )
                    tick()
                    steps.append((tokens, eligible, skipped, never))
                if t < min_new_tokens and eos:
                    logits[:, eos] = -torch.inf
                token = logits.argmax(-1, keepdim=True)
                if pads:
                    token = torch.where(unfinished[:, None], token, pad_token_id)
                out.append(token)
                if not (eos or stopping_criteria):
                    continue
                so_far = torch.cat(out, 1)
                done = (
                    torch.isin(token[:, 0], torch.tensor(eos, device=ids.device))
                    if eos
                    else unfinished & False
                )
                for criterion in stopping_criteria:
                    done = done | torch.as_tensor(
                        criterion(so_far, logits), dtype=torch.bool, device=ids.device
                    )
                unfinished = unfinished & ~done
                if not unfinished.any():
                    break
        for tokens, eligible, skipped, never in steps:
            decisions = MaskedPass(eligible, skipped.tolist(), never.tolist()) if any(eligible) else None
            engine.record_pass(tokens, decisions)
        return torch.cat(out, 1)

    def _run(
        self,
        token: torch.Tensor,
        tokens: PassTokens,
        mask: torch.Tensor,
        cache: StaticCache,
        eligible: list[bool],
        inputs: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One compiled step (timed into ``compile_s`` where it is the first of its shape)."""
        device = token.device
        position = torch.tensor(tokens.pos, device=device)[:, None]
        slot = torch.tensor([tokens.past], device=device)
        key = (tokens.batch, mask.shape[1])
        start = time.perf_counter() if key not in self._compiled else None
        self.ctx.active = True
        try:
            result = self._step(
                self.model,
                self.ctx,
                self.keyword,
                token,
                position,
                slot,
                mask,
                cache,
                torch.tensor(eligible, device=device),
                {k: v.to(device) for k, v in inputs.items()},
            )
        finally:
            self.ctx.active = False
        if start is not None:
            self.compile_s += time.perf_counter() - start
            self._compiled.add(key)
        return result


def _no_clock() -> None:
    pass


def _decoding_pass(batch: int, past: int, before: list[int]) -> PassTokens:
    """A decoding pass of one real token per row over ``past`` cached positions, ``before[row]``
    of them real (what ``PassTokens.read`` finds in ``generate``'s mask)."""
    return PassTokens(batch, 1, past, [True] * batch, list(before), list(before))


def _own_copy(fn: types.FunctionType) -> types.FunctionType:
    """``fn`` with its own code object: dynamo keeps compiled code per code object, up to
    ``recompile_limit`` entries, and each decoder's guards (its context and form) differ."""
    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
