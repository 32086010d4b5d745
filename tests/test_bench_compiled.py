"""``ffnskip bench --compile``: the compiled path's rows beside the eager ones, each path's
speedups against its own dense and skip-all (fields and consistency, not timings)."""

from __future__ import annotations

import torch
from conftest import tiny_model

from lmeval_ffnskip.instruments.bench import Config, add_ideal, decode_speed
from lmeval_ffnskip.instruments.bench_compiled import compiles
from lmeval_ffnskip.skip.settings import SkipPolicy

CONFIGS = [
    Config("hf", None),
    Config("dense", SkipPolicy(method="dense")),
    Config("skip-all", SkipPolicy(method="random", target_skip=1.0, warmup=0)),
    Config("static-0.5", SkipPolicy(method="static", target_skip=0.5, warmup=0)),
    Config("skipdecode-0.25", SkipPolicy(method="skipdecode", target_skip=0.25, warmup=0)),
]


def test_compiled_rows_beside_eager() -> None:
    model = tiny_model("llama", n_layers=4)
    batch = {
        "input_ids": torch.randint(3, 97, (2, 6), generator=torch.Generator().manual_seed(0)),
        "attention_mask": torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]),
    }
    rows = [
        *decode_speed(model, batch, CONFIGS, new_tokens=5, reps=1),
        *decode_speed(model, batch, CONFIGS, new_tokens=5, reps=1, compiled=True),
    ]
    add_ideal(rows)
    eager = {r["config"]: r for r in rows if r["path"] != "compiled"}
    compiled = {r["config"]: r for r in rows if r["path"] == "compiled"}
    assert {r["path"] for r in eager.values()} == {"hf", "eager"} and eager["hf"]["path"] == "hf"
    # plain HF and the layer method have no device form: no compiled row
    assert set(compiled) == {"dense", "skip-all", "static-0.5"}
    for name, row in compiled.items():
        assert row["timing"] == "compiled" and row["compile_s"] > 0
        assert row["tokens_per_s"] == 2 * 4 / row["decode_seconds"] > 0
        # the same decisions on both paths: the same counts
        assert (row["skip_ratio"], row["skip_ratio_pass"]) == (
            eager[name]["skip_ratio"],
            eager[name]["skip_ratio_pass"],
        )
        assert row["vs_hf"] == eager["hf"]["latency_ms_p50"] / row["latency_ms_p50"]
    # each path against its own dense and skip-all
    for group in (eager, compiled):
        assert group["dense"]["speedup"] == 1.0 and group["skip-all"]["share_of_ideal"] == 1.0
        t_dense, t_all = group["dense"]["latency_ms_p50"], group["skip-all"]["latency_ms_p50"]
        assert group["static-0.5"]["ideal_speedup"] == t_dense / (t_dense - 0.5 * (t_dense - t_all))
    assert compiled["static-0.5"]["skip_ratio"] == 0.5


def test_which_configs_compile() -> None:
    assert [compiles(c) for c in CONFIGS] == [False, True, True, True, False]
