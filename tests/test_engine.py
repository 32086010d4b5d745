"""The engine on tiny random models of every supported architecture, plus SmolLM2 batching."""

from __future__ import annotations

import pytest
import torch
from conftest import alone_and_batched, forced_and_stepwise, tiny_model
from transformers import DynamicCache

from lmeval_ffnskip.skip.adapters import ffn_sites
from lmeval_ffnskip.skip.engine import attach, to_host
from lmeval_ffnskip.skip.hf_compat import IncompatibleTransformers, cache_keyword
from lmeval_ffnskip.skip.settings import SkipPolicy


def token_ids(batch: int = 1, length: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 97, (batch, length), generator=torch.Generator().manual_seed(seed))


def count_ffn_rows(model: torch.nn.Module) -> list[int]:
    """Rows fed to each layer's FFN, counted at its first linear layer."""
    counts = [0] * len(ffn_sites(model)[1])
    for site in ffn_sites(model)[1]:
        first = next(m for m in site.mlp.modules() if isinstance(m, torch.nn.Linear))

        def hook(module, args, i=site.index):
            counts[i] += args[0].numel() // module.in_features

        first.register_forward_pre_hook(hook)
    return counts


def _count_norm_rows(model: torch.nn.Module, which: str) -> list[int]:
    """Rows each layer's FFN ``in_norm`` or ``out_norm`` really norms: its class's ``forward`` is
    counted (a hook would also count calls the engine answers without running the norm)."""
    counts = [0] * len(ffn_sites(model)[1])
    width = model.config.hidden_size
    for site in ffn_sites(model)[1]:
        norm = getattr(site, which)
        stock = type(norm)

        def forward(self, x, *args, i=site.index, stock=stock, **kwargs):
            counts[i] += x.numel() // width
            return stock.forward(self, x, *args, **kwargs)

        norm.__class__ = type(f"Counted{stock.__name__}", (stock,), {"forward": forward})
    return counts


@torch.no_grad()
def test_dense_and_unreachable_threshold_are_bit_exact(arch_model):
    ids = token_ids(2)
    ref = arch_model(ids).logits
    for policy in (SkipPolicy(method="dense"), SkipPolicy(threshold=1.5, skip_prompt=True, warmup=0)):
        with attach(arch_model, policy):
            assert torch.equal(arch_model(ids).logits, ref)
            out = arch_model.generate(ids, max_new_tokens=6, do_sample=False)
        assert torch.equal(out, arch_model.generate(ids, max_new_tokens=6, do_sample=False))
    assert torch.equal(arch_model(ids).logits, ref)  # detached: the stock model again
    assert all("forward" not in vars(site.mlp) for site in ffn_sites(arch_model)[1])


@torch.no_grad()
def test_skipped_ffns_do_no_compute_and_attention_always_runs(arch_model):
    policy = SkipPolicy(threshold=-1.0, warmup=2, target_skip=0.25)  # fires at every chance
    rows = count_ffn_rows(arch_model)
    normed = _count_norm_rows(arch_model, "in_norm")
    out_normed = _count_norm_rows(arch_model, "out_norm") if ffn_sites(arch_model)[1][0].out_norm else None
    attn_calls = [0] * len(rows)
    for i, layer in enumerate(arch_model.get_decoder().layers):
        layer.self_attn.register_forward_pre_hook(
            lambda m, a, i=i: attn_calls.__setitem__(i, attn_calls[i] + 1)
        )
    ids = token_ids(1, 12)
    cache = DynamicCache(config=arch_model.config)
    with attach(arch_model, policy) as engine:
        out = arch_model.generate(
            ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, **{cache_keyword(arch_model): cache}
        )
    stats = engine.stats
    n_layers = len(rows)
    assert stats.tokens == 12 + 7 and stats.eligible == 7 - 2
    assert stats.skipped == stats.eligible * engine.layout.k > 0
    assert sum(rows) == stats.tokens * n_layers - stats.skipped
    assert normed == rows  # at batch 1 a skipped block's norms do not run either
    assert out_normed is None or out_normed == rows
    assert attn_calls == [8] * n_layers  # one prefill + 7 decoding steps, every layer
    full = [
        i
        for i, t in enumerate(getattr(arch_model.config, "layer_types", None) or [])
        if t == "full_attention"
    ]
    for i in full or range(n_layers):
        assert cache.layers[i].keys.shape[-2] == out.shape[1] - 1  # every position is cached


@torch.no_grad()
def test_a_skipped_blocks_zero_output_is_reused_and_guarded():
    """A block every row skips returns one kept zero tensor; a model that writes into it in place
    (here a hook standing in for an in-place residual add) is refused at the next skip."""
    model = tiny_model("llama")
    ids = token_ids(1, 6)
    dense = model.generate(ids, max_new_tokens=6, do_sample=False)
    policy = SkipPolicy(method="random", target_skip=1.0, warmup=0)
    with attach(model, policy) as engine:
        assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False)[:, :7], dense[:, :7])
        zero = engine._zero
        assert zero is not None and not zero.any()
        model.generate(ids, max_new_tokens=3, do_sample=False)
        assert engine._zero is zero  # reused across layers and passes
    mlp = ffn_sites(model)[1][1].mlp
    handle = mlp.register_forward_hook(lambda module, args, out: out.add_(1.0))
    try:
        with attach(model, policy), pytest.raises(IncompatibleTransformers, match="in place"):
            model.generate(ids, max_new_tokens=3, do_sample=False)
    finally:
        handle.remove()


@torch.no_grad()
def test_trigger_skips_the_next_k_layers():
    model = tiny_model("llama", n_layers=16)
    policy = SkipPolicy(
        threshold=-1.0, skip_prompt=True, warmup=4, cold_start=3, cold_end=2, target_skip=0.25
    )
    with attach(model, policy, record=True) as engine:
        model(token_ids(2, 10))
    skip = engine.history[0]  # [batch, positions, layers]
    k = engine.layout.k
    assert k == 4
    expected = torch.zeros(16, dtype=torch.bool)
    expected[4 : 4 + k] = True  # fires at layer 3, the first non-cold one
    assert torch.equal(skip[:, :4], torch.zeros(2, 4, 16, dtype=torch.bool))
    assert (skip[:, 4:] == expected).all()
    summary = engine.stats.summary()
    assert summary["skip_ratio_eligible"] == k / 16
    assert summary["never_reached_threshold"] == 0.0
    assert summary["skip_ratio_all"] == 2 * 6 * k / (2 * 10 * 16)
    assert summary["skip_ratio_pass"] == 0.0  # the warm-up positions of the pass ran every block


@torch.no_grad()
def test_blocks_that_no_row_ran():
    """``skip_ratio_pass``: the blocks no row of a decoding pass ran. The forced trigger's rows
    skip the same block; static's rows, at other positions, draw their own layers."""
    model = tiny_model("llama", n_layers=16)
    batch = {"input_ids": token_ids(2, 6), "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])}
    layers = {"warmup": 0, "cold_start": 3, "cold_end": 2, "target_skip": 0.25}
    with attach(model, SkipPolicy(threshold=-1.0, **layers)) as engine:
        model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    summary = engine.stats.summary()
    assert engine.stats.passes == 4  # the decoding passes (the prefill has nothing eligible)
    assert summary["skip_ratio_pass"] == summary["skip_ratio_eligible"] == 4 / 16
    with attach(model, SkipPolicy(method="static", **layers), record=True) as engine:
        model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    decoding = torch.cat(engine.history[1:], dim=1)  # [rows, 4 passes, layers]
    by_all = int(decoding.all(0).sum())
    assert engine.stats.skipped_by_all == by_all and (decoding[0] != decoding[1]).any()
    summary = engine.stats.summary()
    assert summary["skip_ratio_pass"] == by_all / (4 * 16) < summary["skip_ratio_eligible"] == 4 / 16


def _mixed_threshold(model: torch.nn.Module, ids: torch.Tensor, policy: SkipPolicy) -> float:
    """A threshold at which some eligible tokens fire and others do not."""
    for threshold in torch.linspace(-1, 1, 201).tolist():
        with attach(model, SkipPolicy(**{**policy.__dict__, "threshold": threshold}), record=True) as engine:
            model(ids)
        fired = engine.history[0].any(-1)
        if 0 < engine.stats.never_fired < engine.stats.eligible and fired.any():
            return threshold
    raise AssertionError("no threshold gives mixed decisions")


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "qwen3"])
@torch.no_grad()
def test_teacher_forced_pass_equals_token_by_token_decoding(arch):
    model = tiny_model(arch, n_layers=10)
    ids = token_ids(1, 24)
    base = SkipPolicy(skip_prompt=True, warmup=3, target_skip=0.3, cold_start=2, cold_end=1)
    policy = SkipPolicy(**{**base.__dict__, "threshold": _mixed_threshold(model, ids, base)})
    (engine, full), (stepwise, steps) = forced_and_stepwise(model, policy, ids)
    assert torch.equal(torch.cat(stepwise.history, dim=1), engine.history[0])
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-4)
    assert 0 < engine.stats.skipped


@torch.no_grad()
def test_per_row_decisions_in_a_left_padded_batch():
    model = tiny_model("llama", n_layers=10)
    prompts = [token_ids(1, n, seed=n)[0] for n in (3, 9, 5, 12, 7, 4, 10, 6)]
    base = SkipPolicy(warmup=2, target_skip=0.3, cold_start=2, cold_end=1)
    policy = SkipPolicy(
        **{
            **base.__dict__,
            "threshold": _mixed_threshold(
                model, token_ids(1, 24), SkipPolicy(**{**base.__dict__, "skip_prompt": True})
            ),
        }
    )
    with attach(model, policy) as engine:
        singles, together = alone_and_batched(model, prompts, 12)
    assert torch.equal(together, singles)
    assert 0 < engine.stats.never_fired < engine.stats.eligible  # decisions differed between rows


@pytest.mark.parametrize("method", ["random", "static"])
@torch.no_grad()
def test_random_baselines_skip_k_per_token_in_their_region(method):
    model = tiny_model("llama", n_layers=16)
    policy = SkipPolicy(method=method, skip_prompt=True, warmup=0, target_skip=0.25, cold_start=3, cold_end=3)
    with attach(model, policy, record=True) as engine:
        model(token_ids(3, 30))
        model(token_ids(1, 30, seed=7))
    a, b = engine.history
    assert (a.sum(-1) == 4).all()
    assert torch.equal(a[0], b[0])  # the draw depends on position only
    assert len({tuple(row.tolist()) for row in a[0]}) > 5  # and differs between positions
    if method == "static":
        assert not a[..., :3].any() and not a[..., -3:].any()
    else:
        assert a[..., :3].any() and a[..., -3:].any()


def test_unsupported_architecture_is_refused():
    from transformers import AutoConfig, AutoModelForCausalLM

    gpt2 = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", n_layer=2, n_embd=32, n_head=2))
    with pytest.raises(NotImplementedError, match=r"model_type='gpt2'.*supported: .*llama"):
        with attach(gpt2, SkipPolicy()):
            pass


def test_double_attach_is_refused():
    model = tiny_model("llama")
    with attach(model, SkipPolicy()), pytest.raises(RuntimeError, match="already"):
        with attach(model, SkipPolicy()):
            pass


@torch.no_grad()
def test_zero_budget_still_counts_eligible_tokens():
    """target_skip rounding to k=0 skips nothing, but the tokens were eligible and are counted."""
    model = tiny_model("llama")
    with attach(model, SkipPolicy(target_skip=0.01, warmup=0)) as engine:
        model.generate(token_ids(1, 5), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert engine.layout.k == 0
    assert engine.stats.eligible == 3 and engine.stats.skipped == 0
    assert engine.stats.never_fired == 3  # the rule had no budget to spend, so it never fired


@torch.no_grad()
@pytest.mark.parametrize(
    "policy",
    [SkipPolicy(threshold=2.0, warmup=0), SkipPolicy(method="static", target_skip=0.01, warmup=0)],
    ids=["threshold-2", "no-budget"],
)
def test_a_rule_with_nothing_to_decide_leaves_the_layers_alone(policy):
    """Skipping switched off (threshold above 1) or a zero budget: the wrapped layers see no rule
    (the stock path, nothing measured), yet every eligible token is counted."""
    model = tiny_model("llama")
    seen: list[object] = []
    with attach(model, policy) as engine:
        for site in engine.sites:
            site.mlp.register_forward_pre_hook(lambda m, a: seen.append(engine._decisions))
        model.generate(token_ids(2, 5), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert seen and all(rule is None for rule in seen)
    assert engine.stats.eligible == 2 * 3 and engine.stats.skipped == engine.stats.host_syncs == 0
    assert engine.stats.never_fired == (6 if policy.method == "ffnskip" else 0)


def test_host_copy_is_awaited_on_the_stream_of_the_gpu_holding_it(monkeypatch):
    """With the model split over GPUs, a layer's Gram matrix is copied on its own GPU's stream:
    the event the decision waits for must be recorded there, not on the current device's."""
    recorded = []

    class Event:
        def record(self, stream: object = None) -> None:
            recorded.append(stream)

    class OnSecondGPU:
        is_cuda = True
        device = torch.device("cuda", 1)

        def to(self, device: str, non_blocking: bool = False) -> str:
            return f"copied to {device}"

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: f"current stream of {device}")
    host, event = to_host(OnSecondGPU())
    assert host == "copied to cpu" and isinstance(event, Event)
    assert recorded == ["current stream of cuda:1"]
