"""The compiled decoding path (``skip/decode.py``) makes the eager engine's decisions: per-token
skip masks, counters and greedy tokens, at batch 1, in a left-padded batch, and where rows stop
early (EOS, with padding after), with its decisions read once per generation. On an 8-layer
model."""

from __future__ import annotations

import functools
from contextlib import nullcontext

import pytest
import torch

from lmeval_ffnskip.instruments.shapes import tiny_batches, tiny_model
from lmeval_ffnskip.skip import compiling, decode
from lmeval_ffnskip.skip.compiling import graph_refusal
from lmeval_ffnskip.skip.decode import CompiledDecoder
from lmeval_ffnskip.skip.engine import attach, checked_generate, generate_fixed, make_engine
from lmeval_ffnskip.skip.policy import ALWAYS
from lmeval_ffnskip.skip.settings import SkipPolicy

NEW = 10
POLICIES = {
    "dense": SkipPolicy(method="dense"),
    "static": SkipPolicy(method="static", target_skip=0.34, warmup=2, seed=3),
    "random": SkipPolicy(method="random", target_skip=0.5, warmup=1, refresh_every=3),
    # a threshold some similarities reach: decisions change from token to token
    "ffnskip": SkipPolicy(method="ffnskip", target_skip=0.25, warmup=2, threshold=0.92),
    # fires at its first check: the same decisions every token
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
        outs.append(checked_generate(engine, batch["attention_mask"], lambda: model.generate(**batch, **gen)))
    return engine, outs


def _compiled(
    model: torch.nn.Module, policy: SkipPolicy, eos: int
) -> tuple[object, list[torch.Tensor], float]:
    with nullcontext(make_engine(model, policy, record=True)) as engine:
        decoder = CompiledDecoder(model, engine)
        outs = [
            decoder.generate(b["input_ids"], b["attention_mask"], NEW, min_new_tokens=NEW, eos_token_id=1)
            for b in tiny_batches()
        ]
        batch = tiny_batches()[1]
        outs.append(
            checked_generate(
                engine,
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
    # the decisions are read once per generation with eligible rows (three; dense has none), not per token
    assert mine.pop("host_syncs") == (0 if method == "dense" else 3)
    summary.pop("host_syncs")
    assert mine == summary
    assert decoder.summary()["steps"] == len(compiled.history) - 3  # every pass but the prefills
    assert decoder.summary()["shapes_compiled"] == 2  # batch 1 and 3
    if method != "dense":
        assert mine["skipped"] > 0
    if method in ("ffnskip", "spread"):  # similarity decided some skips, not all
        assert 0 < mine["never_fired"] < mine["eligible"]


@pytest.mark.parametrize("model_type", ["gemma", "olmo2", "granite", "stablelm"])
def test_other_families_same_decisions_as_eager(model_type: str) -> None:
    """Gemma's GELU-tanh MLP through the op, OLMo-2's block without an input norm, Granite's
    scaled residual add, StableLM's LayerNorms with biases around the op."""
    model = tiny_model(model_type, n_layers=8)
    policy = POLICIES["ffnskip"]
    eager, expected = _eager(model, policy, eos=-1)
    compiled, got, _ = _compiled(model, policy, eos=-1)
    for want, have in zip(expected, got, strict=True):
        assert torch.equal(want, have)
    for want, have in zip(eager.history, compiled.history, strict=True):
        assert torch.equal(want, have)
    assert compiled.stats.summary()["skipped"] > 0


@pytest.mark.parametrize(
    ("model_type", "why"), [("phi3", "gate_proj"), ("starcoder2", "gate_proj"), ("qwen3_moe", "gate_proj")]
)
def test_blocks_the_op_cannot_run_are_refused(model_type: str, why: str) -> None:
    model = tiny_model(model_type, n_layers=4)
    with (
        nullcontext(make_engine(model, POLICIES["ffnskip"])) as engine,
        pytest.raises(NotImplementedError, match=why),
    ):
        CompiledDecoder(model, engine)


def test_a_refused_cuda_graph_is_reported(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where inductor refuses to capture the step as a CUDA graph (as it raises under
    ``GRAPH_OPTIONS``, wrapped by dynamo), the step runs compiled without one and the decoder's
    summary gives the reason; tokens and masks stay the eager engine's."""
    reason = "skipping cudagraphs due to mutated inputs (1 instances)"
    compiled_step = compiling.compiled_step

    def refusing(fn: object, graphs: bool = False) -> object:
        if not graphs:
            return compiled_step(fn)

        def step(*args: object) -> None:
            raise _as_torch_raises(RuntimeError(reason))

        return step

    monkeypatch.setattr(compiling, "compiled_step", refusing)
    policy, batch = POLICIES["ffnskip-at-once"], tiny_batches()[0]
    with attach(model, policy, record=True) as eager:
        want = generate_fixed(model, batch, NEW)
    with nullcontext(make_engine(model, policy, record=True)) as engine:
        decoder = CompiledDecoder(model, engine)
        assert decoder.summary()["cuda_graphs"] == "off: decoding on cpu"
        decoder.step.graphs = True  # as on CUDA
        decoder.step._compiled = refusing(None, graphs=True)
        have = decoder.generate(
            batch["input_ids"], batch["attention_mask"], NEW, min_new_tokens=NEW, eos_token_id=1
        )
    summary = decoder.summary()
    assert summary["cuda_graphs"] == f"off: {reason}" and not decoder.step.graphs
    assert summary["steps"] == NEW - 1
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
    with nullcontext(make_engine(model, policy)) as engine:
        decoder = CompiledDecoder(model, engine)
        before = decoder.generate(*args, min_new_tokens=NEW, eos_token_id=1)
        step = decoder.step._compiled
        assert torch.equal(decoder.generate(*args, min_new_tokens=NEW, eos_token_id=1), before)
        assert decoder.step._compiled is step  # unchanged: not compiled again
        model.model.norm.register_forward_hook(lambda module, inputs, out: -out)
        have = decoder.generate(*args, min_new_tokens=NEW, eos_token_id=1)
        assert decoder.step._compiled is not step
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
    with (
        nullcontext(make_engine(model, policy)) as engine,
        pytest.raises(NotImplementedError, match=f"method={method}"),
    ):
        CompiledDecoder(model, engine)


def test_what_the_path_cannot_run_is_refused_from_the_config() -> None:
    """Read before any weights load: layers transformers' static cache keeps as sliding windows
    (Mistral's default window too, which has no layer types), blocks the op cannot run."""
    from transformers import AutoConfig

    for model_type, window in (("mistral", {}), ("gemma3_text", {"sliding_window": 16})):
        assert "sliding-window" in decode.config_refusal(AutoConfig.for_model(model_type, **window))
    assert decode.config_refusal(AutoConfig.for_model("mistral", sliding_window=None)) is None
    assert decode.config_refusal(AutoConfig.for_model("llama")) is None
    assert "not a gated MLP" in decode.config_refusal(AutoConfig.for_model("qwen3_moe"))
    assert "mlp_bias=True" in decode.config_refusal(AutoConfig.for_model("llama", mlp_bias=True))
    assert "'gelu'" in decode.config_refusal(AutoConfig.for_model("llama", hidden_act="gelu"))


def test_generation_settings_the_loop_does_not_apply_are_refused() -> None:
    """A model's generation config or a call's settings that change greedy tokens (here a
    repetition penalty) are refused by name, not decoded without them."""
    model = tiny_model("llama", n_layers=6)
    assert decode.generation_refusal(model.generation_config) is None
    assert decode.generation_refusal({"max_new_tokens": 4, "do_sample": False, "temperature": 0.0}) is None
    assert "repetition_penalty=1.3" in decode.generation_refusal({"repetition_penalty": 1.3})
    model.generation_config.no_repeat_ngram_size = 3
    with (
        nullcontext(make_engine(model, POLICIES["static"])) as engine,
        pytest.raises(NotImplementedError, match="ngram"),
    ):
        CompiledDecoder(model, engine)


def test_sliding_window_models_refused() -> None:
    model = tiny_model("gemma3_text", n_layers=4)
    with (
        nullcontext(make_engine(model, POLICIES["static"])) as engine,
        pytest.raises(NotImplementedError, match="sliding"),
    ):
        CompiledDecoder(model, engine)


def test_a_parameter_given_other_strides_is_compiled_anew() -> None:
    """The steps carry no guards on the parameters; a weight whose storage was replaced by the
    same values in another layout (transposed strides) between two generations is noticed by
    ``generate``, which compiles every step anew: the same tokens. (Steps compiled for the old
    layout fail inductor's input checks.)"""
    model = tiny_model("llama", n_layers=4)
    policy, batch = POLICIES["ffnskip-at-once"], tiny_batches()[0]
    args = (batch["input_ids"], batch["attention_mask"], NEW)
    with nullcontext(make_engine(model, policy)) as engine:
        decoder = CompiledDecoder(model, engine)
        before = decoder.generate(*args, min_new_tokens=NEW, eos_token_id=1)
        step = decoder.step._compiled
        weight = model.model.layers[2].mlp.down_proj.weight
        weight.data = weight.data.t().contiguous().t()
        assert not weight.is_contiguous()
        assert torch.equal(decoder.generate(*args, min_new_tokens=NEW, eos_token_id=1), before)
        assert decoder.step._compiled is not step


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


def test_attention_routed_by_kernels_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where transformers' attention is wrapped by ``kernels``' routing (a global variable whose
    attributes every attention sets and resets; transformers' own output collector is the same
    kind of object), the step compiles and decides as the eager engine, and the variable is left
    as it was: the next eager call returns its hidden states."""
    model = tiny_model("llama", n_layers=6)
    attention = type(model.model.layers[0].self_attn)
    monkeypatch.setattr(attention, "forward", _kernel_routed(attention.forward))
    policy, batch = POLICIES["ffnskip"], tiny_batches()[0]
    before = _ACTIVE_KERNEL_FUNCS
    with attach(model, policy, record=True) as eager:
        want = generate_fixed(model, batch, NEW)
    with nullcontext(make_engine(model, policy, record=True)) as engine:
        decoder = CompiledDecoder(model, engine)
        have = decoder.generate(
            batch["input_ids"], batch["attention_mask"], NEW, min_new_tokens=NEW, eos_token_id=1
        )
    assert torch.equal(want, have)
    for a, b in zip(eager.history, engine.history, strict=True):
        assert torch.equal(a, b)
    assert globals()["_ACTIVE_KERNEL_FUNCS"] is before
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    assert hidden is not None and len(hidden) == model.config.num_hidden_layers + 1
