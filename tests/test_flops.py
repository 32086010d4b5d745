"""Per-token decode FLOPs: fvcore with SDPA counted, the analytic cross-check, skip patterns."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ARCHS, refused_in_one_line, tiny_model

from lmeval_ffnskip.cli import main
from lmeval_ffnskip.instruments.flops import (
    analytic_decode_flops,
    decode_flops,
    results_frequency,
    skip_frequency,
)
from lmeval_ffnskip.skip.settings import SkipPolicy


@pytest.mark.parametrize("arch", ARCHS)
def test_counted_equals_analytic_and_parts_add_up(arch):
    model = tiny_model(arch, n_layers=6)
    short, long = decode_flops(model, 10), decode_flops(model, 40)  # tiny gemma3 window: 16
    for counted in (short, long):
        assert abs(counted.total / analytic_decode_flops(model.config, counted.context) - 1) < 0.01
        assert counted.total == counted.attention + counted.ffn + counted.lm_head + counted.other
    c = model.config
    assert short.ffn == 6 * 3 * c.hidden_size * c.intermediate_size and long.ffn == short.ffn
    assert short.lm_head == c.hidden_size * c.vocab_size
    grown = long.attention - short.attention  # only attention's two products grow with the context
    types = getattr(c, "layer_types", None) or ["full_attention"] * 6
    positions = sum(16 - 10 if kind == "sliding_attention" else 40 - 10 for kind in types)
    assert grown == positions * c.num_attention_heads * c.head_dim * 2


# one expert layer's multiply-adds per token, by hand from the tiny configs' widths (hidden 64;
# shapes.TINY_EXTRA: 4 experts, 2 active): the router (64 x 4), 2 experts' gate, up and down
# matrices, and the shared experts' matrices
MOE_LAYER = {
    "qwen3_moe": 64 * 4 + 2 * 3 * 64 * 32,  # moe_intermediate_size 32
    "qwen2_moe": 64 * 4 + 2 * 3 * 64 * 32 + 3 * 64 * 64 + 64 * 1,  # shared expert 64 wide, its gate
    "deepseek_v3": 64 * 4 + 2 * 3 * 64 * 32 + 3 * 64 * 32,  # one shared expert, 32 wide
    "mixtral": 64 * 4 + 2 * 3 * 64 * 128,  # intermediate_size 128 per expert
    "olmoe": 64 * 4 + 2 * 3 * 64 * 128,
    "granitemoe": 64 * 4 + 2 * 3 * 64 * 128,
}


@pytest.mark.parametrize("model_type", sorted(MOE_LAYER))
def test_an_expert_block_counts_its_active_experts(model_type):
    """Top-k of n routed experts, shared experts and the router, per token; a skipped block none."""
    counted = decode_flops(tiny_model(model_type, n_layers=2), 8)
    dense_first = 3 * 64 * 128 if model_type == "deepseek_v3" else MOE_LAYER[model_type]  # first_k_dense 1
    assert counted.ffn_per_layer == (dense_first, MOE_LAYER[model_type])
    assert counted.total == counted.attention + counted.ffn + counted.lm_head + counted.other
    assert counted.other >= 0
    assert counted.skipping([0.0, 1.0]).ffn == dense_first
    assert counted.skipping([1.0, 0.5]).ffn == MOE_LAYER[model_type] // 2


def test_flops_on_the_thin_qwen3_moe_shape(tmp_path, capsys):
    """``ffnskip flops --shape qwen3-30b-a3b --thin``: 48 layers of 128 experts, 8 active, thinned
    to hidden 128 and experts 48 wide (768 x 128 / 2048); static at 25% skips 12 of 48 blocks."""
    out = tmp_path / "flops.json"
    argv = ["flops", "--shape", "qwen3-30b-a3b", "--thin", "--context", "8", "--targets", "0.25",
            "--methods", "static", "--new-tokens", "2", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = {r["config"]: r for r in json.loads(out.read_text())["rows"]}
    layer = 128 * 128 + 8 * 3 * 128 * 48
    assert rows["dense"]["ffn"] == 48 * layer and rows["static-0.25"]["ffn"] == 36 * layer
    assert "experts: the active ones per token" in capsys.readouterr().out


def test_skipped_ffns_count_zero():
    dense = decode_flops(tiny_model("llama", n_layers=4), 16)
    assert dense.skipping([0.0] * 4) == dense
    assert dense.skipping([1.0] * 4).ffn == 0
    half = dense.skipping([0.0, 1.0, 0.5, 0.5])
    assert half.ffn == dense.ffn // 2 and half.attention == dense.attention and half.total < dense.total
    layers = dense.skipping([0.0, 1.0, 0.5, 0.5], whole_layers=True)  # shortgpt, skipdecode
    assert layers.ffn == half.ffn and layers.attention == dense.attention // 2


def test_measured_pattern_and_results_pattern():
    model = tiny_model("llama", n_layers=8)
    batch = {"input_ids": torch.randint(3, 90, (1, 6))}
    frequency = skip_frequency(model, batch, SkipPolicy(method="static", target_skip=0.25, warmup=0), 6)
    assert sum(frequency) == pytest.approx(2) and frequency[0] == frequency[-1] == 0  # k = 2, cold ends
    with pytest.raises(ValueError, match="no token was eligible"):
        skip_frequency(model, batch, SkipPolicy(target_skip=0.25, warmup=50), 4)
    with pytest.raises(ValueError, match="not the results of an lm-eval run with --model ffnskip"):
        results_frequency({"config": {"model": "hf"}})


def test_cli_rows_and_bad_results(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"config": {"ffnskip": {"stats": {"layer_skip_frequency": [0.5] * 30}}}}))
    out = tmp_path / "flops.json"
    argv = ["flops", "--context", "32", "--targets", "0.25", "--new-tokens", "6", "--results", str(results)]
    assert main([*argv, "--json", str(out)]) == 0
    rows = {r["config"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"dense", "results.json", "ffnskip-0.25"}
    assert rows["results.json"]["ffn"] == rows["dense"]["ffn"] // 2
    assert (
        rows["ffnskip-0.25"]["skip"] == pytest.approx(8 / 30)
        and "analytic dense total" in capsys.readouterr().out
    )
    results.write_text("{broken")
    assert main(["flops", "--results", str(results)]) == 2
    assert str(results) in capsys.readouterr().err


BAD_FLAGS = {
    ("--context", "-1"): "--context=-1 is out of range: it must be an integer >= 2",
    ("--targets", "abc"): "--targets='abc' is invalid: it must be a list of numbers in [0, 1], comma",
    ("--targets", "0.25,2"): "--targets='0.25,2' is invalid: it must be a list of numbers in [0, 1]",
    ("--new-tokens", "1"): "--new-tokens=1 is out of range: it must be an integer >= 2",
    ("--threshold", "-3"): "--threshold=-3.0 is out of range: it must be a number >= -1",
    ("--methods", "teleport"): "--methods: method='teleport' is unknown; choose one of ffnskip",
}


@pytest.mark.parametrize("flags", BAD_FLAGS)
def test_bad_flags_exit_2_in_one_line_before_any_weights_load(flags, no_weights, capsys):
    refused_in_one_line(["flops", *flags], BAD_FLAGS[flags], capsys)
