"""Compiled greedy decoding over a stock HF model, gpt-fast style, with FFN skipping kept inside
the compiled step.

A static KV cache (transformers' ``StaticCache``, one per batch size and cache length, reset
between calls, made anew where the model changed), an eager ``prefill`` over the stock modules,
and per token one decoder pass compiled whole (``compiling.compiled_step``, inductor): either
``decode_planned_token``, traced for one set of decisions (``plans.Plan``: no branch in the
step), or ``decode_one_token``, the general step, where the rule's device form (``device.py``)
decides per layer inside it (``compiled.py``). Per step the host does what the eager engine's
pre-hook does (warm-up and eligibility: ``StepCounter``, the rule's ``eligible``, on plain lists);
a rule that decides up front gets its plan from ``begin``, one that reads similarities gets the
last plan that held as its guess (at a batch shape's first such step, the plan it makes where
every similarity is as high as a real one gets), checked by replaying the rule with the
similarities the step returned (``plans.replay``); a guess that does not hold is decoded again
by the general step.
Each step's decisions are the replayed record, counted through ``SkipEngine.record_pass``, so the
engine's stats, ledger and history are filled as the eager path fills them; ``host_syncs``
counts the steps whose similarities were read back (one read per step).

While a ``CompiledDecoder`` generates, the engine's own hooks are taken off the model and the
compiled path's patches put on; both are swapped back afterwards. The compiled steps carry no
guards on the model's modules (``compiling.py``): each ``generate`` compares the model with what
its steps were compiled for (``ModelState``) and compiles them anew where it changed. On CUDA a
planned step runs as a CUDA graph, or, where inductor refuses one, without, the reason kept
(``summary``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from transformers import StaticCache

from .compiled import BlockPatches, StepContext
from .compiling import REFUSALS_RAISE, ModelState, compiled_step, graph_refusal
from .engine import SkipEngine
from .hf_compat import PassTokens, cache_keyword, rewind, traceable_context_variables
from .plans import Plan, PlanBook, replay
from .rows import PassSkips
from .rule import FFNRule
from .settings import SkipPolicy

CACHE_BLOCK = 256  # static caches are sized in multiples of this, so that lengths share a compile
# just below 1: cos(h, h + block) reaches 1 only for a block along h (``CHECKS_ONLY``'s threshold)
HIGHEST_SIMILARITY = math.nextafter(1.0, 0.0)

log = logging.getLogger(__name__)


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoding pass, decided inside: [batch, vocab] fp32 logits, [batch, n_layers] skipped
    blocks, [batch] eligible rows that never fired, [batch, len(ctx.checks)] the similarities at
    the form's checked layers. ``mask`` spans the whole static cache."""
    ctx.begin(eligible, inputs)
    logits = _last_logits(model, keyword, token, mask, position, slot, cache)
    skipped, never, cosines = ctx.outcome()
    return logits, skipped, never, cosines


def decode_planned_token(
    model: nn.Module,
    ctx: StepContext,
    keyword: str,
    token: torch.Tensor,
    position: torch.Tensor,
    slot: torch.Tensor,
    mask: torch.Tensor,
    cache: StaticCache,
    rows: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding pass traced for ``ctx.plan`` (``rows``: its [batch, n_layers] skips): [batch,
    vocab] fp32 logits and [batch, len(plan.measured)] the similarities at the plan's layers."""
    ctx.begin_plan(rows)
    logits = _last_logits(model, keyword, token, mask, position, slot, cache)
    return logits, ctx.plan_outcome(logits)


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
        self.layers = form.layers  # the hooked layers, in the order the eager engine enters them
        self.reads = bool(engine.rule.checked)  # its decisions wait for similarities
        self._step = compiled_step(decode_one_token)
        self._model: ModelState | None = None  # the model as the compiled steps saw it
        # planned steps have no branch and no host read, so on CUDA each is one CUDA graph
        # (the general step's branches are read on the host: inductor alone)
        self._refused: str | None = None  # inductor's reason for refusing a planned step's graph
        self.graphs = model.device.type == "cuda"
        self.plans = PlanBook(lambda: compiled_step(decode_planned_token, self.graphs))
        self._rows: dict[Plan, torch.Tensor] = {}
        self._caches: dict[tuple[int, int], StaticCache] = {}
        self.compile_s = 0.0  # seconds spent in calls that compiled (the first per step and shape)
        self._compiled: set[tuple[Callable[..., object], tuple[int, int]]] = set()

    @property
    def cuda_graphs(self) -> str:
        """Where planned steps run as CUDA graphs: ``planned steps``, or ``off: <why>``."""
        if self.graphs:
            return "planned steps"
        return f"off: {self._refused or f'decoding on {self.model.device.type}'}"

    def summary(self) -> dict[str, object]:
        """How this decoder's steps were decoded (``PlanBook.summary``) and where its planned steps
        ran as CUDA graphs (``cuda_graphs``: ``planned steps``, or ``off: <why>``)."""
        return {**self.plans.summary(), "cuda_graphs": self.cuda_graphs}

    @contextmanager
    def _installed(self) -> Iterator[None]:
        self.engine.remove()
        try:
            with self.patches.installed(), traceable_context_variables(self.model):
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
        with self._installed():
            self._check_model()
            cache = self._cache(batch, length)
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
                    logits, decisions = self._decode(out[-1], tokens, full, cache, eligible)
                    tick()
                    engine.record_pass(tokens, decisions)
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
        return torch.cat(out, 1)

    @contextmanager
    def planned_steps(
        self, plans: Sequence[Plan], input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> Iterator[dict[Plan, Callable[[], torch.Tensor]]]:
        """Each plan's step (compiled at its first call) as a call that decodes the first token
        after the prompt, the cache rewound before each call so that every call decodes the same
        position: [batch, vocab] logits; the calls work inside the block only. For timing plans
        alone (``scripts/planned_step_cost.py``)."""
        batch, width = input_ids.shape
        with torch.no_grad(), self._installed():
            self._check_model()
            cache = self._cache(batch, CACHE_BLOCK)
            logits = prefill(self.model, input_ids, attention_mask, cache, self.keyword)
            full = torch.cat([attention_mask, attention_mask.new_ones(batch, CACHE_BLOCK - width)], 1)
            tokens = _decoding_pass(batch, width, attention_mask.sum(1).tolist())
            args = self._inputs(logits.argmax(-1, keepdim=True), tokens, full, cache)
            for plan in plans:
                self.plans.add(plan)

            def call(plan: Plan) -> torch.Tensor:
                rewind(cache, tokens.past)
                return self._planned(plan, (batch, CACHE_BLOCK), args)[0]

            yield {plan: lambda plan=plan: call(plan) for plan in plans}

    def _check_model(self) -> None:
        """Compile every step anew, with new caches, where the model is not as the compiled steps
        saw it (they do not guard its modules: ``compiling.py``); RuntimeError where its modules
        are not the ones this path was attached to (its patches are on those)."""
        state, seen = ModelState.of(self.model), self._model
        if seen is not None and not state.same_modules(seen):
            raise RuntimeError(
                "the model's modules changed since the compiled decoding path was attached to it; "
                "attach the engine again"
            )
        self._model = state
        if seen is None or state.matches(seen):
            return
        log.info("compiled decoding: the model changed since its steps were compiled; recompiling")
        self.graphs = self._refused is None and self.model.device.type == "cuda"
        self._step = compiled_step(decode_one_token)
        self.plans.renew()
        self._compiled.clear()
        self._caches.clear()
        self._rows.clear()

    def _decode(
        self,
        token: torch.Tensor,
        tokens: PassTokens,
        mask: torch.Tensor,
        cache: StaticCache,
        eligible: list[bool],
    ) -> tuple[torch.Tensor, PassSkips | None]:
        """One step's logits and its settled decisions (None: no row eligible): a planned step
        where the decisions are known (no row eligible; a rule that decides up front) or guessed
        and then confirmed, else the general step."""
        rule, book = self.engine.rule, self.plans
        shape = (tokens.batch, mask.shape[1])
        args = self._inputs(token, tokens, mask, cache)
        if not any(eligible) or not self.reads:
            record = None
            if any(eligible):
                found = replay(rule, self.layers, eligible, tokens.pos, {})
                if found is None:
                    raise RuntimeError(
                        f"method={self.engine.policy.method} asked for a similarity outside its "
                        "checked layers"
                    )
                record = found[0]
            plan = Plan.of(record, ()) if record is not None else Plan(tokens.batch)
            if book.step(shape, plan) is not None:
                book.planned += 1
                return self._planned(plan, shape, args)[0], record
            book.general += 1
            inputs = self.form.inputs(eligible, tokens.pos)
            return self._general(shape, args, eligible, inputs)[0], record
        guess = book.guess(shape) or self._first_guess(shape, eligible, tokens.pos)
        if guess is not None:
            logits, cosines = self._planned(guess, shape, args)
            found = replay(rule, self.layers, eligible, tokens.pos, self._read(guess.measured, cosines))
            if found is not None and found[0].skips() == guess.skips:
                book.planned += 1
                book.held(shape, guess)
                return logits, found[0]
            book.discarded += 1
            book.failed(shape)
            rewind(cache, tokens.past)
        book.general += 1
        inputs = self.form.inputs(eligible, tokens.pos)
        logits, skipped, never, cosines = self._general(shape, args, eligible, inputs)
        found = replay(rule, self.layers, eligible, tokens.pos, self._read(self.ctx.checks, cosines))
        if (
            found is None
            or not torch.equal(found[0].mask(), skipped.cpu())
            or sorted(found[0].never_rows()) != never.nonzero().flatten().tolist()
        ):
            raise RuntimeError(
                f"method={self.engine.policy.method}: its device form decided otherwise than its rule "
                "replayed with the same similarities"
            )
        record, read = found
        plan = Plan.of(record, read)
        if book.step(shape, plan) is not None:
            book.held(shape, plan)
        return logits, record

    def _first_guess(self, shape: tuple[int, int], eligible: list[bool], positions: list[int]) -> Plan | None:
        """The guess of a shape's first step with eligible rows (``PlanBook.first_guess``): the
        plan the rule makes where every similarity it reads is ``HIGHEST_SIMILARITY``, so that it
        fires wherever a real similarity can make it fire (``ffnskip`` at its first check, as it
        does for nearly every token of the models we ship), compiled at once instead of after two
        general steps."""

        def optimistic() -> Plan | None:
            highest = {layer: [HIGHEST_SIMILARITY] * len(eligible) for layer in self.layers}
            found = replay(self.engine.rule, self.layers, eligible, positions, highest)
            return None if found is None else Plan.of(*found)

        return self.plans.first_guess(shape, optimistic)

    def _read(self, layers: tuple[int, ...], cosines: torch.Tensor) -> dict[int, list[float]]:
        """The similarities a step returned, per layer (one host read)."""
        if not layers:
            return {}
        self.engine.stats.host_syncs += 1
        return dict(zip(layers, cosines.T.tolist(), strict=True))

    def _inputs(
        self, token: torch.Tensor, tokens: PassTokens, mask: torch.Tensor, cache: StaticCache
    ) -> tuple[object, ...]:
        """The arguments every step takes: model, context, cache keyword, token, position, slot,
        mask, cache."""
        device = token.device
        position = torch.tensor(tokens.pos, device=device)[:, None]
        slot = torch.tensor([tokens.past], device=device)
        return (self.model, self.ctx, self.keyword, token, position, slot, mask, cache)

    def _planned(
        self, plan: Plan, shape: tuple[int, int], args: tuple[object, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``plan``'s step: [batch, vocab] logits and [batch, len(plan.measured)] similarities (a
        CUDA graph where ``graphs``; a refused one compiled again without and run)."""
        rows = self._rows.get(plan)
        if rows is None:
            rows = self._rows[plan] = plan.rows(self.engine.layout.n_layers).to(args[3].device)
        self.ctx.plan = plan
        try:
            step = self.plans.steps[plan]
            if self.graphs and (out := self._graph_call(step, shape, *args, rows)) is not None:
                return out
            # looked up again: a refused graph renewed every plan's step (compiled without graphs)
            return self._timed(self.plans.steps[plan], shape, *args, rows)
        finally:
            self.ctx.plan = None

    def _graph_call(
        self, step: Callable[..., object], shape: tuple[int, int], *args: object
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``step(*args)`` as a CUDA graph, its outputs copied out of the graph's memory (the next
        replay writes there); None where inductor refused the graph, which it does before the step
        runs: every planned step is then compiled without, the reason in ``summary()``."""
        torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs have been read
        try:
            with torch._inductor.config.patch(REFUSALS_RAISE):
                logits, cosines = self._timed(step, shape, *args)
        except RuntimeError as error:
            if (reason := graph_refusal(error)) is None:
                raise
            log.warning("compiled decoding: planned steps run without CUDA graphs: %s", reason)
            self.graphs, self._refused = False, reason
            self.plans.renew()
            return None
        return logits.clone(), cosines.clone()

    def _general(
        self,
        shape: tuple[int, int],
        args: tuple[object, ...],
        eligible: list[bool],
        inputs: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        device = args[3].device
        return self._timed(
            self._step,
            shape,
            *args,
            torch.tensor(eligible, device=device),
            {k: v.to(device) for k, v in inputs.items()},
        )

    def _timed(self, step: Callable[..., object], shape: tuple[int, int], *args: object) -> object:
        """``step(*args)`` inside a step (timed into ``compile_s`` where it is the first of its shape)."""
        key = (step, shape)
        start = time.perf_counter() if key not in self._compiled else None
        self.ctx.active = True
        try:
            return step(*args)
        finally:
            self.ctx.active = False
            if start is not None:  # a call that failed compiling counts too
                self.compile_s += time.perf_counter() - start
                self._compiled.add(key)


def _no_clock() -> None:
    pass


def _decoding_pass(batch: int, past: int, before: list[int]) -> PassTokens:
    """A decoding pass of one real token per row over ``past`` cached positions, ``before[row]``
    of them real (what ``PassTokens.read`` finds in ``generate``'s mask)."""
    return PassTokens(batch, 1, past, [True] * batch, list(before), list(before))
