"""``ffnskip bench --compile``: the compiled path's rows and HF's own compiled static-cache
``generate`` (``hf-static``) beside the eager ones, each path's speedups against its own dense
and skip-all (fields and consistency, not timings)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from lmeval_ffnskip.instruments.bench import decode_speed
from lmeval_ffnskip.instruments.bench_compiled import compiles
from lmeval_ffnskip.instruments.bench_configs import Config
from lmeval_ffnskip.instruments.ideal import add_ideal
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
    eager = {r["config"]: r for r in rows if r["path"] in ("hf", "eager")}
    compiled = {r["config"]: r for r in rows if r["path"] == "compiled"}
    (hf_static,) = [r for r in rows if r["path"] == "hf-static"]
    assert hf_static["config"] == "hf-static" and hf_static["timing"] == "streamer"
    assert hf_static["compile_s"] > 0 and hf_static["tokens_per_s"] * hf_static[
        "decode_seconds"
    ] == pytest.approx(8)
    assert hf_static["vs_hf"] > 0 and eager["hf"]["vs_hf"] == 1.0  # every path against plain HF eager
    assert "speedup" not in hf_static and hf_static["skip_ratio"] == 0.0  # no dense of its own
    assert {r["path"] for r in eager.values()} == {"hf", "eager"} and eager["hf"]["path"] == "hf"
    # plain HF and the layer method have no device form: no compiled row
    assert set(compiled) == {"dense", "skip-all", "static-0.5"}
    for name, row in compiled.items():
        assert row["timing"] == "compiled" and row["compile_s"] > 0
        assert row["tokens_per_s"] * row["decode_seconds"] == pytest.approx(8)  # 2 rows x 4 steps
        # the same decisions on both paths: the same counts
        assert (row["skip_ratio"], row["skip_ratio_pass"]) == (
            eager[name]["skip_ratio"],
            eager[name]["skip_ratio_pass"],
        )
        assert row["vs_hf"] > 0
    # each path against its own dense and skip-all (the arithmetic: test_bench's synthetic rows)
    for group in (eager, compiled):
        assert group["dense"]["speedup"] == 1.0 and group["skip-all"]["share_of_ideal"] == 1.0
        assert group["static-0.5"]["ideal_speedup"] is not None
    assert compiled["static-0.5"]["skip_ratio"] == 0.5


def test_which_configs_compile() -> None:
    assert [compiles(c) for c in CONFIGS] == [False, True, True, True, False]


def test_streamed_bytes_leave_out_an_untied_input_embedding() -> None:
    from lmeval_ffnskip.instruments.roofline import streamed_bytes

    model = tiny_model("llama", n_layers=2)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight is embedding
    assert streamed_bytes(model) == total - (0 if tied else embedding.numel() * embedding.element_size())
