"""`ffnskip sweep`: cells, resumability, atomic cells, agreement with the dense cell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DATA_DIR

from lmeval_ffnskip.cli import main
from lmeval_ffnskip.sweep import SHIPPED, SweepConfig, cells


def test_config_cells_and_errors(tmp_path):
    cfg = SweepConfig(
        tasks=["freebaseqa"], methods=["ffnskip", "static"], targets=[0.25], grid={"warmup": [0, 8]}
    )
    assert [c.name for c in cells(cfg)] == [
        "dense",
        "ffnskip-0.25-warmup0",
        "ffnskip-0.25-warmup8",
        "static-0.25-warmup0",
        "static-0.25-warmup8",
    ]
    assert cells(cfg)[2].model_args == {"method": "ffnskip", "target_skip": 0.25, "warmup": 8}
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [freebaseqa]\ntargetz: [0.25]\n")
    with pytest.raises(ValueError, match=r"unknown keys \['targetz'\]; valid: "):
        SweepConfig.load(bad)
    assert main(["sweep", str(bad), "--out", str(tmp_path / "out")]) == 2
    for shipped in SHIPPED.glob("*.yaml"):
        assert cells(SweepConfig.load(Path(shipped.stem)))  # every shipped config parses


def test_sweep_resumes_and_measures_agreement(tmp_path, monkeypatch):
    monkeypatch.setenv("FFNSKIP_DATA_DIR", DATA_DIR)
    config = tmp_path / "sweep.yaml"
    config.write_text(
        "tasks: [freebaseqa]\nmethods: [ffnskip]\ntargets: [0.25]\ngrid: {threshold: [0.9, 2.0]}\n"
        "model_args: {warmup: 2}\nlimit: 3\nbatch_size: 3\n"
        "flops: {context: 32, targets: [0.25], new_tokens: 4}\n"
    )
    out = tmp_path / "out"
    assert main(["sweep", str(config), "--out", str(out)]) == 0
    root = out / "smollm2-135m"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cells_run"] == 3
    rows = {r["cell"]: r for r in summary["rows"]}
    never, skipping = rows["ffnskip-0.25-threshold2.0"], rows["ffnskip-0.25-threshold0.9"]
    assert never["skip_ratio"] == 0 and skipping["skip_ratio"] > 0.2
    results = json.loads((root / "ffnskip-0.25-threshold2.0" / "results.json").read_text())
    dense = json.loads((root / "dense" / "results.json").read_text())
    assert results["results"]["freebaseqa"] == dense["results"]["freebaseqa"]
    agree = results["agreement"]["freebaseqa"]
    assert agree["exact_match"] == 1.0 and agree["rougeL"] == pytest.approx(100)
    assert [s["first_divergence"] for s in agree["samples"]] == [None] * 3
    assert "freebaseqa/agreement_exact_match" in skipping and "freebaseqa/exact_match" in skipping
    flops = json.loads((root / "flops.json").read_text())
    assert [r["config"] for r in flops["rows"]] == ["dense", "ffnskip-0.25"]

    # an interrupted cell (a .partial folder, no results.json) is redone; finished ones are kept
    kept = (root / "dense" / "results.json").stat().st_mtime_ns
    redo = root / "ffnskip-0.25-threshold0.9"
    redo.rename(root / "ffnskip-0.25-threshold0.9.partial")
    assert main(["sweep", str(config), "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["cells_run"] == 1
    assert (root / "dense" / "results.json").stat().st_mtime_ns == kept
    assert (redo / "results.json").exists() and not (root / "ffnskip-0.25-threshold0.9.partial").exists()
