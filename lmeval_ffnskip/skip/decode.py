"""Compiled greedy decoding over a stock HF model, gpt-fast style, with FFN skipping decided and
done on the device.

``prefill`` runs the prompt over the stock modules (eagerly) into a static KV cache
(transformers' ``StaticCache``, one per batch size and cache length, the last one per batch size
kept and reset between calls);
``decode_one_token`` is one decoder pass in which the rule's device form (``rule.DeviceForm``) decides
per layer and the FFN op reads those decisions (``compiled.py``): the same compiled step for
every token, with no branch and no host read, so on CUDA it runs as one CUDA graph. How it is
compiled (no module guards, CUDA graphs and their refusals, when the model changed) is
``compiling.py``'s; ``CompiledDecoder.generate`` is the loop.

Per step the host does what the eager engine's pre-hook does (warm-up and eligibility:
``StepCounter``, the rule's ``eligible``, on plain lists, and the form's host ``inputs``); the
step's decisions ([batch, n_layers] skipped blocks and the rows that never fired) stay on the
device until the generation ends, are then read in one copy (``host_syncs``) and counted through
``SkipEngine.record_pass``, so the engine's stats, ledger and history are filled as the eager
path fills them.

While a ``CompiledDecoder`` generates, the engine's own hooks are taken off the model and the
compiled path's patches put on; both are swapped back afterwards. On CUDA the host's inputs of a
step go up from pinned memory without waiting, so the loop reads from the device only the
generation's tokens, where a row can still stop (EOS not suppressed, or a stopping criterion).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from transformers import GenerationConfig, PretrainedConfig, StaticCache
from transformers.cache_utils import StaticLayer

from .compiled import BlockPatches, StepContext, op_refusal
from .compiling import CompiledStep
from .engine import SkipEngine
from .hf_compat import PassTokens, cache_keyword
from .hooks import attached_engine
from .rows import SettledPass
from .rule import FFNRule
from .settings import SkipPolicy

CACHE_BLOCK = 256  # static caches are sized in multiples of this, so that lengths share a compile

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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoding pass, decided inside: [batch, vocab] fp32 logits, [batch, n_layers] skipped
    blocks and [batch] eligible rows that never fired. ``mask`` spans the whole static cache."""
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


def config_refusal(config: PretrainedConfig) -> str | None:
    """Why the compiled decoding path cannot run a model of ``config`` (read before any weights
    load), or None: layers that transformers' static cache keeps as sliding windows (their length
    is a Python int, so dynamo would recompile every step), or FFN blocks its op cannot run."""
    layers = StaticCache(config=config, max_cache_len=CACHE_BLOCK).layers  # allocates nothing yet
    if any(type(layer) is not StaticLayer for layer in layers):
        return (
            f"{config.model_type}: the compiled decoding path does not take sliding-window attention "
            "layers (transformers' static cache keeps their length as a Python int, so dynamo would "
            "recompile every step); drop compile / --compile"
        )
    return op_refusal(config)


def check_config(config: PretrainedConfig) -> None:
    """ValueError naming why the compiled decoding path cannot run a model of ``config``
    (``config_refusal``), for checks made before any weights load."""
    if reason := config_refusal(config):
        raise ValueError(reason)


# generation settings that change greedy tokens, which the compiled loop does not apply
UNAPPLIED = (
    "repetition_penalty",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "suppress_tokens",
    "begin_suppress_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "sequence_bias",
    "min_length",
)


def generation_refusal(settings: GenerationConfig | dict[str, object]) -> str | None:
    """Why the compiled loop would not decode as HF ``generate`` with ``settings`` (a model's
    generation config, or a call's keyword arguments): a setting that changes greedy tokens and
    that the loop does not apply, set to other than its default; or None."""
    default = GenerationConfig()
    read = settings.get if isinstance(settings, dict) else lambda name: getattr(settings, name, None)
    given = [name for name in UNAPPLIED if read(name) not in (None, getattr(default, name, None))]
    if not given:
        return None
    return (
        f"the compiled decoding path does not apply {', '.join(f'{n}={read(n)!r}' for n in given)} "
        "(HF generate would); drop compile / --compile, or the setting"
    )


class CompiledDecoder:
    """The compiled decoding path of one attached ``SkipEngine``: same decisions, same counters."""

    def __init__(self, model: nn.Module, engine: SkipEngine) -> None:
        if reason := refusal(engine.policy):
            raise NotImplementedError(reason)
        form = engine.rule.device()
        if form is None:
            raise NotImplementedError(f"method={engine.policy.method}'s rule gave no device form")
        if reason := config_refusal(model.config) or generation_refusal(model.generation_config):
            raise NotImplementedError(reason)
        self.model, self.engine, self.form = model, engine, form
        self.ctx = StepContext(form, engine.layout.n_layers)
        self.patches = BlockPatches(self.ctx, engine.sites)
        self.keyword = cache_keyword(model)
        self.step = CompiledStep(decode_one_token, model)
        self._caches: dict[int, tuple[int, StaticCache]] = {}  # per batch size: the last length's

    @property
    def compile_s(self) -> float:
        """Seconds spent in calls that compiled (the first per batch shape)."""
        return self.step.compile_s

    def summary(self) -> dict[str, object]:
        """How this decoder's steps ran: ``steps`` decoded, ``shapes_compiled``, and
        ``cuda_graphs`` (``on``, or ``off: <why>``)."""
        return self.step.summary()

    @contextmanager
    def _installed(self) -> Iterator[None]:
        """The step's block patches on the model for the block; the engine's own hooks must be off
        (it counts through ``record_pass`` here, not through its hooks)."""
        if attached_engine(self.model) is not None:
            raise RuntimeError(
                "the compiled path decodes with its own patches, and this model has a skip engine "
                "attached: make the engine with make_engine, not attach"
            )
        with self.patches.installed():
            yield

    def _cache(self, batch: int, length: int) -> StaticCache:
        """A static cache of ``batch`` rows and ``length`` positions, reset (one kept per batch size)."""
        kept, cache = self._caches.get(batch, (None, None))
        if cache is None or kept != length:
            cache = StaticCache(config=self.model.config, max_cache_len=length)
            self._caches[batch] = (length, cache)
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
        device = ids.device
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
        eos_ids = torch.tensor(eos, device=device)
        pads = bool(eos) and pad_token_id is not None
        engine, rule = self.engine, self.engine.rule
        tick = clock or _no_clock
        steps: list[tuple[PassTokens, list[bool], torch.Tensor, torch.Tensor]] = []
        with self._installed(), self.step.shapes_allowed():
            if self.step.renew_if_changed():
                self._caches.clear()
            cache = self._cache(batch, length)
            prompt = PassTokens.read((), {"input_ids": ids, "attention_mask": mask})
            engine.steps.since(prompt)  # starts warm-up counting; no prompt token is eligible
            tick()
            logits = prefill(self.model, ids, mask, cache, self.keyword)
            tick()
            before = list(engine.steps.prompt_lengths)
            out = [ids]
            unfinished = torch.ones(batch, dtype=torch.bool, device=device)
            for t in range(max_new_tokens):
                if t:
                    tokens = _decoding_pass(batch, width + t - 1, [n + t - 1 for n in before])
                    eligible = rule.eligible(engine.steps.since(tokens), tokens.real)
                    inputs = self.form.inputs(eligible, tokens.pos)
                    args = (
                        self.model,
                        self.ctx,
                        self.keyword,
                        out[-1],
                        _staged(torch.tensor(tokens.pos)[:, None], device),
                        _staged(torch.tensor([tokens.past]), device),
                        full,
                        cache,
                        _staged(torch.tensor(eligible), device),
                        {k: _staged(v, device) for k, v in inputs.items()},
                    )
                    with self._active():
                        logits, skipped, never = self.step(*args)
                    tick()
                    steps.append((tokens, eligible, skipped, never))
                suppressed = t < min_new_tokens and bool(eos)  # no row can meet EOS yet
                if suppressed:
                    logits.index_fill_(1, eos_ids, -torch.inf)
                token = logits.argmax(-1, keepdim=True)
                if pads:
                    token = torch.where(unfinished[:, None], token, pad_token_id)
                out.append(token)
                if not (eos or stopping_criteria) or (suppressed and not stopping_criteria):
                    continue  # nothing can stop a row: no host read of this step's tokens
                so_far = torch.cat(out, 1)
                done = torch.isin(token[:, 0], eos_ids) if eos else unfinished & False
                for criterion in stopping_criteria:
                    done = done | torch.as_tensor(criterion(so_far, logits), dtype=torch.bool, device=device)
                unfinished = unfinished & ~done
                if not unfinished.any():
                    break
            engine.record_pass(prompt, None)
            self._record(steps)
        return torch.cat(out, 1)

    @contextmanager
    def _active(self) -> Iterator[None]:
        """The patched modules compute the step's blocks (not their stock ``forward``s)."""
        self.ctx.active = True
        try:
            yield
        finally:
            self.ctx.active = False

    def _record(self, steps: list[tuple[PassTokens, list[bool], torch.Tensor, torch.Tensor]]) -> None:
        """Count ``steps`` (each: its pass, its eligible rows, its decisions on the device) into the
        engine, their decisions read in one copy."""
        decided = [i for i, (_, eligible, _, _) in enumerate(steps) if any(eligible)]
        read: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if decided:
            skipped = torch.stack([steps[i][2] for i in decided]).cpu()
            never = torch.stack([steps[i][3] for i in decided]).cpu()
            self.engine.stats.host_syncs += 1
            read = {i: (skipped[j], never[j]) for j, i in enumerate(decided)}
        for i, (tokens, eligible, _, _) in enumerate(steps):
            found = read.get(i)
            record = None if found is None else SettledPass(eligible, *found)
            self.engine.record_pass(tokens, record)


def _no_clock() -> None:
    pass


def _staged(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``host`` on ``device``; to a GPU from pinned memory without waiting (a copy from pageable
    memory would hold the host until the GPU's queue reaches it)."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def _decoding_pass(batch: int, past: int, before: list[int]) -> PassTokens:
    """A decoding pass of one real token per row over ``past`` cached positions, ``before[row]``
    of them real (what ``PassTokens.read`` finds in ``generate``'s mask)."""
    return PassTokens(batch, 1, past, [True] * batch, list(before), list(before))
