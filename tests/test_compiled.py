"""The compiled decoding path (``skip/decode.py``) makes the eager engine's decisions: per-token
skip masks, counters and greedy tokens, at batch 1, in a left-padded batch, and where rows stop
early (EOS, with padding after), whichever way each step was decoded (a planned step that held,
a guess discarded and decoded again, the general step). On an 8-layer model."""

from __future__ import annotations

import functools

import pytest
import torch

from lmeval_ffnskip.instruments.shapes import tiny_batches, tiny_model
from lmeval_ffnskip.skip import compiling, decode, hf_compat
from lmeval_ffnskip.skip.compiling import GUARD_FILTER, graph_refusal, own_copy
from lmeval_ffnskip.skip.decode import CompiledDecoder, decode_one_token
from lmeval_ffnskip.skip.engine import attach, checked_generate, generate_fixed
from lmeval_ffnskip.skip.plans import Plan, PlanBook
from lmeval_ffnskip.skip.settings import ALWAYS, CHECKS_ONLY, NEVER, SkipPolicy

NEW = 10
POLICIES = {
    "dense": SkipPolicy(method="dense"),
    "static": SkipPolicy(method="static", target_skip=0.34, warmup=2, seed=3),
    "random": SkipPolicy(method="random", target_skip=0.5, warmup=1, refresh_every=3),
    # a threshold some similarities reach: decisions change from token to token
    "ffnskip": SkipPolicy(method="ffnskip", target_skip=0.25, warmup=2, threshold=0.92),
    # fires at its first check: the same decisions every token, guesses hold
    "ffnskip-at-once": SkipPolicy(method="ffnskip", target_skip=0.25, warmup=2, threshold=ALWAYS),
    # a level that some tokens' similarities reach and others' do not: both kinds of skip occur
    "spread": SkipPolicy(method="spread", target_skip=0.25, warmup=1, calibration=((0.85, 0.05),) * 8),
}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_model("llama", n_layers=8)


def _eager(model: torch.nn.Module, policy: SkipPolicy, eos: int) -> tuple[object, list[torch.Tensor]]:
    with attach(model, policy, record=True) as engine:
        outs = [generate_fixed(model, batch, NEW) for batch in tiny_batches()]
        batch = tiny_batches()[1]
        gen = {"max_new_tokens": NEW, "do_sample": False, "eos_token_id": eos, "pad_token_id": 0}
        outs.append(checked_generate(model, batch["attention_mask"], lambda: model.generate(**batch, **gen)))
    return engine, outs


def _compiled(
    model: torch.nn.Module, policy: SkipPolicy, eos: int
) -> tuple[object, list[torch.Tensor], float]:
    with attach(model, policy, record=True) as engine:
        decoder = CompiledDecoder(model, engine)
        outs = [
            decoder.generate(b["input_ids"], b["attention_mask"], NEW, min_new_tokens=NEW, eos_token_id=1)
            for b in tiny_batches()
        ]
        batch = tiny_batches()[1]
        outs.append(
            checked_generate(
                model,
                batch["attention_mask"],
                lambda: decoder.generate(
                    batch["input_ids"], batch["attention_mask"], NEW, eos_token_id=eos, pad_token_id=0
                ),
            )
        )
    return engine, outs, decoder


def _early_eos(model: torch.nn.Module, policy: SkipPolicy) -> int:
    """A token that row 1 of the padded batch emits at its 4th step, so that it stops early."""
    with attach(model, policy):
        return int(generate_fixed(model, tiny_batches()[1], NEW)[1, 7 + 3])


@pytest.mark.parametrize("method", list(POLICIES))
def test_same_decisions_as_eager(model: torch.nn.Module, method: str) -> None:
    policy = POLICIES[method]
    eos = _early_eos(model, policy)
    eager, expected = _eager(model, policy, eos)
    compiled, got, decoder = _compiled(model, policy, eos)
    assert decoder.compile_s > 0
    for want, have in zip(expected, got, strict=True):
        assert torch.equal(want, have)
    assert (got[2][1, 7 + 4 :] == 0).all()  # row 1 met EOS at its 4th token: padded after it
    assert len(eager.history) == len(compiled.history)
    for want, have in zip(eager.history, compiled.history, strict=True):
        assert torch.equal(want, have)
    summary, mine = eager.stats.summary(), compiled.stats.summary()
    steps = decoder.summary()
    reads = policy.method in ("ffnskip", "spread")
    # a rule that reads similarities: one read per step with eligible rows, one more per discarded guess
    assert mine.pop("host_syncs") == (mine["passes"] + steps["discarded_steps"] if reads else 0)
    summary.pop("host_syncs")
    assert mine == summary
    decoded = steps["planned_steps"] + steps["general_steps"]
    assert decoded == len(compiled.history) - 3  # every pass but the three generations' prefills
    if method != "dense":
        assert mine["skipped"] > 0
    if method in ("ffnskip", "spread"):  # similarity decided some skips, not all
        assert 0 < mine["never_fired"] < mine["eligible"]
    if method == "dense":
        assert steps["general_steps"] == 0 and steps["plans_compiled"] == 2  # batch 1 and 3
    if method == "ffnskip-at-once":  # the first guess (every similarity 1) holds: no general step
        assert steps["discarded_steps"] == steps["general_steps"] == 0 and steps["planned_steps"] > 0


def test_a_guess_that_fails_is_decoded_again(model: torch.nn.Module) -> None:
    """A compiled guess whose decisions the rule does not make is discarded and the token decoded
    again at the same cache position: the eager engine's tokens and masks all the same."""
    policy, batch = POLICIES["ffnskip"], tiny_batches()[0]
    with attach(model, policy, record=True) as eager:
        want = generate_fixed(model, batch, NEW)
    with attach(model, policy, record=True) as engine:
        decoder = CompiledDecoder(model, engine)
        last = max(engine.rule.skippable)
        wrong = Plan(1, ((last, (0,)),), tuple(engine.rule.checked))  # a skip the rule never makes
        for _ in range(2):  # decided at two consecutive steps: compiled
            decoder.plans.step((1, 256), wrong)
        decoder.plans.held((1, 256), wrong)
        have = decoder.generate(batch["input_ids"], batch["attention_mask"], NEW, min_new_tokens=NEW)
    assert decoder.plans.summary()["discarded_steps"] >= 1
    assert torch.equal(want, have)
    for a, b in zip(eager.history, engine.history, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("threshold", "skips"), [(ALWAYS, True), (0.999, True), (CHECKS_ONLY, False), (NEVER, False)]
)
def test_the_first_guess_fires_where_a_real_similarity_can(
    model: torch.nn.Module, threshold: float, skips: bool
) -> None:
    """ffnskip's first guess fires at its first check for any threshold a real similarity (below
    1) reaches, and never at ``checks-only``'s (1: every check runs, none fires)."""
    policy = SkipPolicy(method="ffnskip", target_skip=0.25, warmup=0, threshold=threshold)
    with attach(model, policy) as engine:
        plan = CompiledDecoder(model, engine)._first_guess((1, 256), [True], [7])
    checked = tuple(engine.rule.checked)
    assert plan is not None and bool(plan.skips) == skips
    assert plan.measured == (checked[:1] if skips else checked if threshold == CHECKS_ONLY else ())


def test_a_first_guess_is_compiled_at_once_and_given_up_where_it_fails() -> None:
    """A shape's first guess gets its step when made, once per shape. One that fails before it
    ever held gives up its place (its step kept aside and reused if its plan comes due), and no
    more first guesses are made; one that held keeps its step."""
    book = PlanBook(object)
    wrong, right = Plan(1, ((5, (0,)),), (4,)), Plan(1, ((6, (0,)),), (4,))
    assert book.first_guess("a", lambda: right) is right
    book.held("a", right)
    book.failed("a")
    assert right in book.steps
    assert book.first_guess("b", lambda: wrong) is wrong and wrong in book.steps
    assert book.first_guess("b", lambda: right) is None  # once per shape
    step = book.steps[wrong]
    book.failed("b")
    assert wrong not in book.steps and book.guess("b") is None
    assert book.first_guess("c", lambda: wrong) is None  # no more first guesses
    assert book.step("d", wrong) is None and book.step("d", wrong) is step  # due: reused
    assert book.summary()["plans_compiled"] == 2


def test_planned_steps_decode_one_position_per_plan(model: torch.nn.Module) -> None:
    """``planned_steps`` (for timing plans alone): each call decodes the token after the prompt
    again (the cache rewound), the plan without skips as the eager model does, a plan leaving out
    a block otherwise."""
    batch = tiny_batches()[0]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        token = model(input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1, keepdim=True)
        longer = torch.cat([mask, mask.new_ones(1, 1)], 1)
        want = model(input_ids=torch.cat([ids, token], 1), attention_mask=longer).logits[:, -1]
    with attach(model, POLICIES["static"]) as engine:
        decoder = CompiledDecoder(model, engine)
        full, gone = Plan(1), Plan(1, ((max(engine.rule.skippable), (0,)),))
        with decoder.planned_steps([full, gone], ids, mask) as steps:
            first, again, other = steps[full](), steps[full](), steps[gone]()
    assert torch.allclose(first, want, atol=1e-4) and torch.equal(first, again)
    assert not torch.allclose(other, want, atol=1e-4)


def test_a_refused_cuda_graph_is_reported(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where inductor refuses to capture a planned step as a CUDA graph (as it raises under
    ``GRAPH_OPTIONS``, wrapped by dynamo), the step runs compiled without one, every later plan
    too, and the decoder's summary gives the reason; tokens and masks stay the eager engine's."""
    reason = "skipping cudagraphs due to mutated inputs (1 instances)"
    compiled_step = decode.compiled_step

    def refusing(fn: object, graphs: bool = False) -> object:
        if not graphs:
            return compiled_step(fn)

        def step(*args: object) -> None:
            raise _as_torch_raises(RuntimeError(reason))

        return step

    monkeypatch.setattr(decode, "compiled_step", refusing)
    policy, batch = POLICIES["ffnskip-at-once"], tiny_batches()[0]
    with attach(model, policy, record=True) as eager:
        want = generate_fixed(model, batch, NEW)
    with attach(model, policy, record=True) as engine:
        decoder = CompiledDecoder(model, engine)
        assert decoder.summary()["cuda_graphs"] == "off: decoding on cpu"
        decoder.graphs = True  # as on CUDA
        have = decoder.generate(
            batch["input_ids"], batch["attention_mask"], NEW, min_new_tokens=NEW, eos_token_id=1
        )
    summary = decoder.summary()
    assert summary["cuda_graphs"] == f"off: {reason}" and not decoder.graphs
    assert summary["planned_steps"] > 0 and summary["plans_compiled"] == 2  # no skips, then the rule's
    assert torch.equal(want, have)
    for a, b in zip(eager.history, engine.history, strict=True):
        assert torch.equal(a, b)


def test_a_changed_model_is_compiled_anew() -> None:
    """The compiled steps do not guard the model's modules; a model changed between two
    generations (here a hook that negates the final norm's output, which dynamo's module guards
    would have seen) is noticed by ``generate`` and its steps compiled again: the next
    generation gives the eager engine's tokens with the hook. An unchanged model is not compiled
    again; a replaced module (which the path's patches are not on) is refused."""
    model = tiny_model("llama", n_layers=4)
    policy, batch = POLICIES["ffnskip-at-once"], tiny_batches()[0]
    args = (batch["input_ids"], batch["attention_mask"], NEW)
    with attach(model, policy) as engine:
        decoder = CompiledDecoder(model, engine)
        before = decoder.generate(*args, min_new_tokens=NEW, eos_token_id=1)
        step = decoder._step
        assert torch.equal(decoder.generate(*args, min_new_tokens=NEW, eos_token_id=1), before)
        assert decoder._step is step  # unchanged: not compiled again
        model.model.norm.register_forward_hook(lambda module, inputs, out: -out)
        have = decoder.generate(*args, min_new_tokens=NEW, eos_token_id=1)
        assert decoder._step is not step
        layer = model.model.layers[1]
        mlp, layer.mlp = layer.mlp, type(layer.mlp)(model.config)
        with pytest.raises(RuntimeError, match="attach the engine again"):
            decoder.generate(*args)
        layer.mlp = mlp
    with attach(model, policy):
        want = generate_fixed(model, batch, NEW)
    assert not torch.equal(want, before)  # the hook changes the tokens
    assert torch.equal(want, have)


def _as_torch_raises(error: Exception) -> Exception:
    """``error`` raised in inductor, as it reaches dynamo's caller: ``InductorError`` inside
    ``BackendCompilerFailed``, raised ``from None``."""
    inductor = torch._inductor.exc.InductorError(error, None)
    return torch._dynamo.exc.BackendCompilerFailed(print, inductor, None)


def test_graph_refusal_is_told_from_other_errors() -> None:
    refusal = RuntimeError("skipping cudagraphs due to cpu device\nstack: ...")
    assert graph_refusal(_as_torch_raises(refusal)) == "skipping cudagraphs due to cpu device"
    assert graph_refusal(refusal) == "skipping cudagraphs due to cpu device"
    assert graph_refusal(_as_torch_raises(RuntimeError("shape mismatch, not a cudagraph"))) is None
    assert graph_refusal(ValueError("skipping cudagraphs")) is None


@pytest.mark.parametrize("method", ["shortgpt", "skipdecode"])
def test_methods_without_device_form_refused(method: str) -> None:
    model = tiny_model("llama", n_layers=6)
    policy = SkipPolicy(method=method, target_skip=0.25, calibration=((0.9, 0.05),) * 6, influence=(0.1,) * 6)
    with attach(model, policy) as engine, pytest.raises(NotImplementedError, match=f"method={method}"):
        CompiledDecoder(model, engine)


def test_sliding_window_models_refused() -> None:
    model = tiny_model("gemma3_text", n_layers=4)
    with attach(model, POLICIES["static"]) as engine, pytest.raises(NotImplementedError, match="sliding"):
        CompiledDecoder(model, engine)


def test_each_decoder_compiles_its_own_code() -> None:
    assert own_copy(decode_one_token).__code__ is not own_copy(decode_one_token).__code__


def test_every_step_is_compiled_without_module_guards(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step is compiled with the module-guard filter (torch.compile pops ``guard_filter_fn``
    from the options it is given, so a shared dict would filter only the first)."""
    given: list[dict] = []

    def compile(fn: object, **kwargs: object) -> object:
        given.append(dict(kwargs["options"]))
        kwargs["options"].pop("guard_filter_fn")  # as torch.compile does
        return fn

    monkeypatch.setattr(torch, "compile", compile)
    compiling.compiled_step(decode_one_token)
    compiling.compiled_step(decode_one_token, graphs=True)
    assert [options["guard_filter_fn"] for options in given] == [GUARD_FILTER] * 2
    assert given[1]["triton.cudagraphs"] and "triton.cudagraphs" not in given[0]


def test_a_parameter_given_other_strides_is_compiled_anew() -> None:
    """The steps carry no guards on the parameters; a weight whose storage was replaced by the
    same values in another layout (transposed strides) between two generations is noticed by
    ``generate``, which compiles every step anew: the same tokens. (Steps compiled for the old
    layout fail inductor's input checks.)"""
    model = tiny_model("llama", n_layers=4)
    policy, batch = POLICIES["ffnskip-at-once"], tiny_batches()[0]
    args = (batch["input_ids"], batch["attention_mask"], NEW)
    with attach(model, policy) as engine:
        decoder = CompiledDecoder(model, engine)
        before = decoder.generate(*args, min_new_tokens=NEW, eos_token_id=1)
        step, planned = decoder._step, dict(decoder.plans.steps)
        assert planned  # ffnskip firing at once: every eligible step was planned
        weight = model.model.layers[2].mlp.down_proj.weight
        weight.data = weight.data.t().contiguous().t()
        assert not weight.is_contiguous()
        assert torch.equal(decoder.generate(*args, min_new_tokens=NEW, eos_token_id=1), before)
        assert decoder._step is not step
        assert all(decoder.plans.steps.get(plan) is not old for plan, old in planned.items())


class AttributeRouting:
    """``kernels``' routing variable as it runs in a compiled function (its ``CompileableContextVar``):
    state in attributes, a reset that finds none set raises."""

    def __init__(self) -> None:
        self.value: object = None
        self.active = False

    def get(self) -> object:
        return self.value

    def set(self, value: object) -> object:
        previous, self.value, self.active = self.value, value, True
        return previous

    def reset(self, token: object) -> None:
        if not self.active:
            raise RuntimeError("reset without a set")
        self.value, self.active = token, token is not None


_ACTIVE_KERNEL_FUNCS = AttributeRouting()  # the global name kernels' wrapper reads


def _kernel_routed(forward: object) -> object:
    """A forward wrapped as `kernels`' `use_kernelized_func` wraps Llama's attention (5.25 on)."""

    @functools.wraps(forward)
    def routed(self: torch.nn.Module, *args: object, **kwargs: object) -> object:
        token = _ACTIVE_KERNEL_FUNCS.set({})
        try:
            return forward(self, *args, **kwargs)
        finally:
            _ACTIVE_KERNEL_FUNCS.reset(token)

    return routed


def test_attention_routed_by_kernels_compiles_around_the_branches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where transformers' attention is wrapped by ``kernels``' routing (attribute stores in every
    attention, which torch 2.13-2.14's dynamo loses across the general step's ``torch.cond``), the
    general step still compiles and decides as the eager engine, the variable swapped for a
    traceable one while the path decodes and put back after; and transformers' own collector of
    outputs (the same kind of variable) is left as it was: the next eager call returns its hidden
    states (none came back once a general step had run, before it was swapped too)."""
    model = tiny_model("llama", n_layers=6)
    attention = type(model.model.layers[0].self_attn)
    monkeypatch.setattr(attention, "forward", _kernel_routed(attention.forward))
    policy, batch = POLICIES["static"], tiny_batches()[0]
    before = _ACTIVE_KERNEL_FUNCS
    with attach(model, policy, record=True) as eager:
        want = generate_fixed(model, batch, NEW)
    with attach(model, policy, record=True) as engine:
        decoder = CompiledDecoder(model, engine)
        with decoder._installed():
            assert globals()["_ACTIVE_KERNEL_FUNCS"] is hf_compat.VARIABLES["_ACTIVE_KERNEL_FUNCS"]
        have = decoder.generate(
            batch["input_ids"], batch["attention_mask"], NEW, min_new_tokens=NEW, eos_token_id=1
        )
    assert decoder.summary()["general_steps"] > 0 and torch.equal(want, have)
    for a, b in zip(eager.history, engine.history, strict=True):
        assert torch.equal(a, b)
    assert globals()["_ACTIVE_KERNEL_FUNCS"] is before
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    assert hidden is not None and len(hidden) == model.config.num_hidden_layers + 1
