"""``ffnskip bench`` on a tiny model: timing per pass, achieved ratios, the ideal bound."""

from __future__ import annotations

import pytest
import torch
from conftest import refused_in_one_line, tiny_model

from lmeval_ffnskip.instruments.bench import decode_speed, run_bench
from lmeval_ffnskip.instruments.bench_configs import Config, default_configs
from lmeval_ffnskip.instruments.bench_eager import lockstep
from lmeval_ffnskip.instruments.calibrate import similarities
from lmeval_ffnskip.instruments.ideal import add_ideal
from lmeval_ffnskip.instruments.options import BenchOptions
from lmeval_ffnskip.instruments.shapes import SHAPES, shape_config, thin
from lmeval_ffnskip.skip.engine import attach, generate_fixed, generation_stats
from lmeval_ffnskip.skip.settings import SkipPolicy


def test_decode_speed_rows_and_ideal():
    model = tiny_model("llama")
    batch = {
        "input_ids": torch.randint(3, 97, (2, 6)),
        "attention_mask": torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]),
    }
    configs = [*default_configs((0.25,)), Config("static-0.5", SkipPolicy(method="static", target_skip=0.5))]
    rows = decode_speed(model, batch, configs, new_tokens=5, reps=2)
    add_ideal(rows)
    by = {r["config"]: r for r in rows}
    assert set(by) == {c.name for c in configs}
    for row in rows:
        assert row["prompt_tokens"] == 11 and row["batch_size"] == 2
        assert row["tokens_per_s"] * row["decode_seconds"] == pytest.approx(8)  # 2 rows x 4 decoding steps
        assert 0 < row["latency_ms_p50"] <= row["latency_ms_p90"] <= row["latency_ms_p99"]
        assert row["peak_memory_mb"] is None  # CPU
    # skip ratios are over decoding passes only: warmup=0 makes every decoding step eligible
    skip_all = by["skip-all"]
    assert skip_all["skip_ratio"] == 1.0 and skip_all["ideal_speedup"] == pytest.approx(skip_all["speedup"])
    assert by["static-0.5"]["skip_ratio"] == 0.0  # default warmup 25 > 4 decoding steps
    assert by["ffnskip-off"]["skip_ratio"] == by["dense"]["skip_ratio"] == by["hf"]["skip_ratio"] == 0.0
    assert by["dense"]["speedup"] == 1.0 and by["dense"]["ideal_speedup"] == 1.0
    assert by["dense"]["share_of_ideal"] is None
    assert 0 < by["ffnskip-0.25"]["skip_ratio"] <= 0.25
    assert by["hf"]["vs_hf"] == 1.0
    # host reads: checks-only reads at every checked layer of every decoding step (one read for
    # both rows), nothing else reads but ffnskip until it fires
    checks_only = SkipPolicy(threshold=1.0)
    checked = len(checks_only.rule(checks_only, checks_only.layout(model.config.num_hidden_layers)).checked)
    assert by["checks-only"]["reads_per_step"] == checked > 0
    for name in ("hf", "dense", "ffnskip-off", "skip-all", "static-0.5"):
        assert by[name]["reads_per_step"] == 0, name
    assert 0 < by["ffnskip-0.25"]["reads_per_step"] <= checked
    assert [r["config"] for r in rows if "ms_per_read" in r] == ["checks-only"]


def _row(config: str, step_ms: list[float], skip: float, method: str = "ffnskip") -> dict:
    return {
        "config": config,
        "method": method,
        "batch_size": 1,
        "skip_ratio": skip,
        "decode_seconds": sum(step_ms) / 1000,
        "latency_ms_p10": min(step_ms),
        "latency_ms_p50": sorted(step_ms)[len(step_ms) // 2],
    }


def test_speedup_statistics():
    """A stall in one run moves the run-level figure; the per-step statistics see through it."""
    rows = [
        _row("dense", [10, 10, 10, 10, 50], 0.0, "dense"),
        _row("skip-all", [6, 6, 6, 6, 6], 1.0, "random"),
        _row("ffnskip-0.5", [8, 8, 8, 8, 8], 0.5),
    ]
    add_ideal(rows, "p50")
    by = {r["config"]: r for r in rows}
    assert by["skip-all"]["speedup"] == pytest.approx(10 / 6)
    assert by["ffnskip-0.5"]["ideal_speedup"] == pytest.approx(10 / 8)
    assert by["ffnskip-0.5"]["share_of_ideal"] == pytest.approx(1.0)
    assert {r["speed_stat"] for r in rows} == {"p50"}
    add_ideal(rows, "run")
    assert by["ffnskip-0.5"]["speedup"] == pytest.approx(90 / 40)  # the stall counts here
    with pytest.raises(ValueError, match="p10"):
        add_ideal(rows, "mean")


def test_cost_of_one_check():
    """checks-only minus skipping off, per host read, in ms per step, whichever time is compared."""
    rows = [
        _row("dense", [10, 10, 10, 10], 0.0, "dense"),
        _row("skip-all", [6, 6, 6, 6], 1.0, "random"),
        {**_row("ffnskip-off", [10, 10, 10, 10], 0.0), "reads_per_step": 0.0},
        {**_row("checks-only", [12, 12, 12, 12], 0.0), "reads_per_step": 4.0},
    ]
    for row in rows:
        row["new_tokens"] = 5  # 4 decoding steps
    add_ideal(rows, "p50")
    by = {r["config"]: r for r in rows}
    assert by["checks-only"]["ms_per_read"] == pytest.approx(0.5) and "ms_per_read" not in by["ffnskip-off"]
    add_ideal(rows, "run")
    assert by["checks-only"]["ms_per_read"] == pytest.approx(0.5)
    del rows[2]  # without the row to compare with, no figure (not a zero)
    by["checks-only"].pop("ms_per_read")
    add_ideal(rows, "p50")
    assert "ms_per_read" not in by["checks-only"]


@torch.no_grad()
def test_lockstep_decodes_each_config_as_generate_does():
    """Configurations decoded in turns see the passes ``generate`` would give each (same tokens,
    positions and decisions, hence the same stats), and no engine stays attached."""
    model = tiny_model("llama")
    batch = {
        "input_ids": torch.randint(3, 97, (2, 6)),
        "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]),
    }
    cos = similarities(model, batch, 8)  # a threshold that splits the tokens
    threshold = float(cos[:, 3:].median())
    configs = [
        Config("hf", None),
        Config("skip-all", SkipPolicy(method="random", target_skip=1.0, warmup=0)),
        Config(
            "static-0.5", SkipPolicy(method="static", target_skip=0.5, warmup=0, cold_start=1, cold_end=1)
        ),
        Config(
            "ffnskip", SkipPolicy(threshold=threshold, target_skip=0.25, warmup=1, cold_start=1, cold_end=1)
        ),
        Config(
            "skipdecode",
            SkipPolicy(method="skipdecode", target_skip=0.25, warmup=0, cold_start=1, cold_end=1),
        ),
    ]
    sequences = {}
    for config in configs:
        with attach(model, config.policy or SkipPolicy(method="dense")):
            sequences[config.name] = generate_fixed(model, batch, 8)
    times, engines = lockstep(model, batch, configs, sequences)
    assert all(len(t) == 8 and min(t) > 0 for t in times.values())
    assert engines["hf"] is None
    assert not any("forward" in vars(m) for m in model.modules())
    assert not model.model._forward_pre_hooks and not model.model._forward_hooks
    for config in configs[1:]:
        expected = generation_stats(model, batch, config.policy, 8)
        assert engines[config.name].stats.summary() == expected, config.name
    assert 0 < engines["ffnskip"].stats.never_fired < engines["ffnskip"].stats.eligible
    assert engines["skipdecode"].stats.skipped > 0  # whole layers (the other engine) skipped too

    rows = decode_speed(model, batch, configs, new_tokens=5, reps=2, lockstep=True)
    by = {r["config"]: r for r in rows}
    assert {r["timing"] for r in rows} == {"lockstep"} and by["skip-all"]["skip_ratio"] == 1.0
    assert by["static-0.5"]["skip_ratio"] == 0.5 and by["hf"]["peak_memory_mb"] is None


@pytest.mark.parametrize("name", SHAPES)
def test_shipped_shapes_and_their_thin_variants(name):
    """Every shipped shape is a config transformers builds; its thin variant keeps the depth, the
    architecture, the FFN's (and each expert's) expansion and the grouped-query ratio, with small
    widths."""
    from transformers import AutoConfig

    values = {k: v for k, v in shape_config(name).items() if k != "source"}
    narrow = thin(values)
    for v in (values, narrow):
        config = AutoConfig.for_model(**v)
        kv_heads = getattr(config, "num_key_value_heads", config.num_attention_heads)  # GPT-NeoX: none
        assert config.num_attention_heads % kv_heads == 0
    assert narrow["num_hidden_layers"] == values["num_hidden_layers"]
    assert narrow["model_type"] == values["model_type"] and narrow["hidden_size"] <= 128
    for width in ("intermediate_size", "moe_intermediate_size"):  # the FFN's and each expert's
        if width in values:
            ratio = values[width] / values["hidden_size"]
            assert narrow[width] / narrow["hidden_size"] == pytest.approx(ratio, rel=0.02)
    groups = values["num_attention_heads"] // values.get("num_key_value_heads", values["num_attention_heads"])
    assert narrow["num_attention_heads"] == groups * narrow["num_key_value_heads"]


def test_the_parallel_residual_shape_skips_its_ffns():
    """Pythia-6.9B's thin shape: 32 parallel GPT-NeoX layers (6.86 B parameters at full width);
    static at 25% skips 8 of its 32 FFN blocks in every decoding step."""
    from lmeval_ffnskip.instruments.shapes import shape_model, token_batch
    from lmeval_ffnskip.skip.adapters import ffn_sites
    from lmeval_ffnskip.skip.engine import attach, generate_fixed
    from lmeval_ffnskip.skip.settings import SkipPolicy

    model = shape_model("pythia-6.9b", torch.float32, "cpu", thin_widths=True)
    assert all(site.parallel is not None for site in ffn_sites(model)[1]) and len(ffn_sites(model)[1]) == 32
    with attach(model, SkipPolicy(method="static", target_skip=0.25, warmup=0)) as engine:
        generate_fixed(model, token_batch(model.config.vocab_size, 1, "cpu"), 3)
    assert engine.stats.skipped == 2 * 8  # two decoding steps


def test_thin_shape_bench_end_to_end():
    """``--shape llama-2-7b --thin``: a 32-layer model with random weights, the forced trigger
    skipping exactly k of 32 FFNs per decoding step, the JSON saying what the model is."""
    payload = run_bench(
        BenchOptions(
            shape="llama-2-7b",
            thin=True,
            batch_sizes=(1, 2),
            targets=(0.25,),
            methods=("ffnskip", "static"),
            new_tokens=4,
            reps=1,
            lockstep=True,
        ),
        progress=False,
    )
    env = payload["environment"]
    assert env["model"] == "shape:llama-2-7b-thin" and "random" in env["weights"] and "thin" in env["widths"]
    by = {(r["config"], r["batch_size"]): r for r in payload["rows"]}
    for batch in (1, 2):
        assert by["ffnskip-0.25", batch]["skip_ratio"] == by["static-0.25", batch]["skip_ratio"] == 8 / 32
        assert by["skip-all", batch]["skip_ratio"] == 1.0 and by["checks-only", batch]["skip_ratio"] == 0.0
        # the forced trigger: one host read per decoding step for all rows; checks-only one per
        # checked layer (non-cold 4..27 but the last)
        assert by["ffnskip-0.25", batch]["reads_per_step"] == 1.0
        assert by["static-0.25", batch]["reads_per_step"] == 0
        # the forced trigger's rows skip the same block; static's rows (prompts of 7 and 12
        # tokens) draw their own layers, so fewer blocks are skipped by every row at batch 2
        assert by["ffnskip-0.25", batch]["skip_ratio_pass"] == 8 / 32
        static = by["static-0.25", batch]["skip_ratio_pass"]
        assert static == 8 / 32 if batch == 1 else static < 8 / 32
        checks = by["checks-only", batch]
        assert checks["reads_per_step"] == 23.0 and "ms_per_read" in checks
    with pytest.raises(ValueError, match="pass shape with thin"):
        run_bench(BenchOptions(thin=True))
    with pytest.raises(ValueError, match="decide from the weights"):
        run_bench(BenchOptions(shape="llama-2-7b", thin=True, methods=("spread",)))


# each bad flag's line names the flag as typed, the value and what is valid
BAD_FLAGS = {
    ("--batch-sizes", "1,0"): ("--batch-sizes='1,0'", "integers >= 1"),
    ("--batch-sizes", "x"): ("--batch-sizes='x'", "integers >= 1"),
    ("--targets", "abc"): ("--targets='abc'", "numbers in [0, 1]"),
    ("--new-tokens", "1"): ("--new-tokens=1", ">= 2"),
    ("--reps", "0"): ("--reps=0", ">= 1"),
    ("--threshold", "-2"): ("--threshold=-2.0", ">= -1"),
    ("--methods", "teleport"): ("--methods", "'teleport'", "ffnskip"),
    ("--stat", "mean"): ("--stat='mean'", "p50, p10, run"),
    ("--shape", "llama-2-7b", "--reps", "-1"): ("--reps=-1", ">= 1"),
}


@pytest.mark.parametrize("flags", BAD_FLAGS)
def test_bad_flags_exit_2_in_one_line_before_any_weights_load(flags, no_weights, capsys):
    refused_in_one_line(["bench", *flags], BAD_FLAGS[flags], capsys)


def test_a_bench_stopped_midway_keeps_what_it_measured(tmp_path, monkeypatch):
    """``bench --json`` rewrites its file after each batch size and path: a run stopped in its
    second batch size (a time limit's kill) leaves the first one's rows with
    their speedups, marked incomplete, and the report says so. (``--no-overheads``: without the
    rows that measure the engine's own costs.)"""
    from lmeval_ffnskip.cli import main
    from lmeval_ffnskip.instruments import bench
    from lmeval_ffnskip.reporting.report import build, render, speed_scaling
    from lmeval_ffnskip.reporting.results import read_bench

    measure = bench.decode_speed

    class Killed(Exception):
        """What a time limit's kill is to the run: nothing after it runs."""

    def stopped_at_batch_2(model, batch, *args, **kwargs):
        if len(batch["input_ids"]) == 2:
            raise Killed
        return measure(model, batch, *args, **kwargs)

    monkeypatch.setattr(bench, "decode_speed", stopped_at_batch_2)
    out = tmp_path / "bench.json"
    flags = ["--shape", "smollm2-135m", "--thin", "--batch-sizes", "1,2", "--targets", "0.25"]
    flags += ["--no-overheads", "--new-tokens", "3", "--reps", "1", "--lockstep", "--json", str(out)]
    with pytest.raises(Killed):
        main(["bench", *flags])
    doc = read_bench(out)
    assert doc["complete"] is False and doc["pending"] == ["batch 2, eager path"]
    assert {r["batch_size"] for r in doc["rows"]} == {1}
    assert [r["config"] for r in doc["rows"]] == ["hf", "dense", "skip-all", "ffnskip-0.25"]
    kept = next(r for r in doc["rows"] if r["config"] == "ffnskip-0.25")
    assert kept["skip_ratio"] > 0 and {"speedup", "ideal_speedup", "share_of_ideal"} <= set(kept)
    (row,) = speed_scaling([doc])
    assert row["pending"] == ["batch 2, eager path"]
    assert 'title="not measured: batch 2, eager path">(run stopped midway)' in render(build([], "x", [doc]))


def test_a_shape_larger_than_free_memory_is_refused_before_it_is_built(monkeypatch):
    """Qwen3-30B-A3B's shape needs about 61 GB in bf16: refused in one line, nothing allocated."""
    from lmeval_ffnskip.instruments import shapes

    monkeypatch.setattr(shapes, "_free_bytes", lambda device: 24 * 10**9)
    with pytest.raises(
        ValueError, match=r"needs 6\d\.\d GB of weights and 24\.0 GB are free on cpu; add --thin"
    ):
        shapes.shape_model("qwen3-30b-a3b", torch.bfloat16, "cpu")
    thin = shapes.shape_model("qwen3-30b-a3b", torch.float32, "cpu", thin_widths=True)
    assert thin.config.num_experts == 128 and thin.config.moe_intermediate_size == 48


def test_compile_on_a_shape_the_compiled_path_cannot_run_is_refused_before_it_is_built(monkeypatch):
    """``--compile --shape qwen3-30b-a3b``: its expert blocks are refused in one line, nothing built."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(ValueError, match="qwen3_moe: its FFN block is not a gated MLP"):
        run_bench(
            BenchOptions(shape="qwen3-30b-a3b", thin=True, batch_sizes=(1,), targets=(0.25,), compile=True)
        )
