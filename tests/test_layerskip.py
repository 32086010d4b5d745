"""The layer-skip baselines: ``shortgpt`` (pruned layers) and ``skipdecode`` (a per-step schedule)."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import alone_and_batched, forced_and_stepwise, tiny_model
from test_engine import token_ids

from lmeval_ffnskip.skip import layerskip
from lmeval_ffnskip.skip.engine import attach
from lmeval_ffnskip.skip.settings import SkipPolicy

N_LAYERS = 12


def _count_calls(model: torch.nn.Module, part: str) -> list[int]:
    """Calls of each layer's ``part`` (``self_attn`` or ``mlp``)."""
    calls = [0] * len(model.get_decoder().layers)
    for i, layer in enumerate(model.get_decoder().layers):
        getattr(layer, part).register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def _identity_reference(model: torch.nn.Module, layers: tuple[int, ...], ids: torch.Tensor) -> torch.Tensor:
    """Logits with ``layers`` computed and then replaced by their input (compute-then-discard)."""
    handles = [
        model.get_decoder()
        .layers[i]
        .register_forward_hook(
            lambda m, args, kwargs, out: args[0] if args else kwargs["hidden_states"], with_kwargs=True
        )
        for i in layers
    ]
    try:
        return model(ids, use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
@torch.no_grad()
def test_shortgpt_drops_the_least_influential_layers_for_real(arch):
    model = tiny_model(arch, n_layers=N_LAYERS)
    influence = tuple(0.5 - 0.01 * i for i in range(N_LAYERS))  # the deepest layers matter least
    policy = SkipPolicy(method="shortgpt", target_skip=0.4, influence=influence)
    # FFN share of a tiny layer's matrices: 3*64*128 / (3*64*128 + 2*64*64 + 2*64*32) = 2/3
    n = round(0.4 * N_LAYERS * 2 / 3)
    protected = layerskip.mask_layers(model.config, N_LAYERS)
    expected = tuple(sorted([i for i in reversed(range(N_LAYERS)) if i not in protected][:n]))
    ids = token_ids(2, 10)
    reference = _identity_reference(model, expected, ids)
    attn, mlp = _count_calls(model, "self_attn"), _count_calls(model, "mlp")
    with attach(model, policy, record=True) as engine:
        logits = model(ids, use_cache=False).logits
        out = model.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert engine.plan.order == expected and engine.layout.k == n
    assert torch.equal(logits, reference)
    assert all(attn[i] == mlp[i] == 0 for i in expected)  # a dropped layer does no work at all
    assert all(attn[i] > 0 for i in range(N_LAYERS) if i not in expected)
    summary = engine.stats.summary()
    assert summary["skip_ratio_all"] == summary["skip_ratio_pass"] == pytest.approx(n / N_LAYERS)
    assert engine.stats.passes == 1 + 5  # the teacher-forced pass, generate's prefill and 4 steps
    assert out.shape == (2, 15)


@torch.no_grad()
def test_block_influence_finds_an_identity_layer():
    model = tiny_model("llama", n_layers=N_LAYERS)
    layer = model.get_decoder().layers[5]
    layer.self_attn.o_proj.weight.zero_()
    layer.mlp.down_proj.weight.zero_()  # layer 5 now returns its input
    ids = token_ids(2, 10)
    influence = layerskip.block_influence(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert influence[5] == pytest.approx(0.0, abs=1e-6) and min(influence[:5] + influence[6:]) > 1e-3
    policy = SkipPolicy(method="shortgpt", target_skip=0.15, influence=tuple(influence))  # one layer
    dense = model(ids).logits
    with attach(model, policy) as engine:
        assert engine.plan.order == (5,)
        assert torch.allclose(model(ids).logits, dense, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
@torch.no_grad()
def test_skipdecode_bypasses_a_growing_block_and_never_runs_it_again(arch):
    model = tiny_model(arch, n_layers=N_LAYERS)
    policy = SkipPolicy(method="skipdecode", target_skip=0.25, warmup=2, cold_start=2, cold_end=2, horizon=8)
    attn = _count_calls(model, "self_attn")
    ids = token_ids(1, 10)
    with attach(model, policy, record=True) as engine:
        model.generate(ids, max_new_tokens=14, min_new_tokens=14, do_sample=False)
    n = engine.layout.k
    assert n == round(0.25 * N_LAYERS * 2 / 3)
    history = [step[0, -1] for step in engine.history]  # prompt pass, then one pass per step
    assert not history[0].any() and not history[1].any() and not history[2].any()  # warm-up
    counts = [int(h.sum()) for h in history[1:]]
    assert counts == sorted(counts) and counts[-1] == 2 * n  # grows to 2n, never shrinks
    for before, after in itertools.pairwise(history):
        assert not (before & ~after).any()  # once bypassed, always bypassed
    bypassed = history[-1].nonzero().squeeze(1).tolist()
    protected = layerskip.mask_layers(model.config, N_LAYERS)
    assert bypassed == [i for i in range(2, N_LAYERS) if i not in protected][: 2 * n]  # the lower block
    assert sum(counts[2 : 2 + 8]) / 8 == pytest.approx(n, abs=0.5)  # mean n over the horizon
    # attention ran once per pass until the layer was bypassed: its KV is never needed again
    first_skip = {i: next(t for t, h in enumerate(history) if h[i]) for i in bypassed}
    assert all(attn[i] == first_skip[i] for i in bypassed)


@torch.no_grad()
def test_skipdecode_is_the_same_alone_and_in_a_left_padded_batch():
    model = tiny_model("llama", n_layers=N_LAYERS)
    policy = SkipPolicy(method="skipdecode", target_skip=0.3, warmup=1, horizon=4)
    prompts = [token_ids(1, n, seed=n)[0] for n in (5, 9, 7)]
    with attach(model, policy) as engine:
        singles, together = alone_and_batched(model, prompts, 8)
    assert torch.equal(singles, together) and engine.stats.skipped > 0


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
@torch.no_grad()
def test_skipdecode_teacher_forced_pass_equals_decoding(arch):
    """With skip_prompt a token's step is its position: one pass computes what decoding does."""
    model = tiny_model(arch, n_layers=N_LAYERS)
    policy = SkipPolicy(method="skipdecode", target_skip=0.25, warmup=3, horizon=8, skip_prompt=True)
    ids = token_ids(2, 16)
    (engine, full), (stepwise, steps) = forced_and_stepwise(model, policy, ids)
    assert torch.equal(torch.cat(stepwise.history, dim=1), engine.history[0])
    assert engine.history[0][0, -1].sum() == 2 * engine.layout.k  # fully grown by the last position
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-4)
    assert engine.stats.skipped == stepwise.stats.skipped > 0


def test_layer_methods_reject_what_they_cannot_do():
    model = tiny_model("llama", n_layers=N_LAYERS)
    with pytest.raises(ValueError, match="refresh_every does not apply"):
        SkipPolicy(method="shortgpt", refresh_every=4)
    with pytest.raises(ValueError, match="Block Influence"):
        layerskip.plan(model, SkipPolicy(method="shortgpt"))
    with pytest.raises(ValueError, match="method=skipdecode can skip at most 4"):
        layerskip.plan(model, SkipPolicy(method="skipdecode", target_skip=0.9, cold_start=2, cold_end=2))
