"""`ffnskip sweep`: cells, resumability, atomic cells, agreement with the dense cell."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from conftest import DATA_DIR

from lmeval_ffnskip.cli import main
from lmeval_ffnskip.instruments.sweep import SHIPPED, SweepConfig, cells


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


def test_sweep_resumes_and_measures_agreement(sweep_dir, tmp_path, monkeypatch):
    """A second config into a finished sweep's folder runs only its new cells; an interrupted
    cell (a .partial folder) is redone; agreement with dense is measured per sample."""
    monkeypatch.setenv("FFNSKIP_DATA_DIR", DATA_DIR)
    out = tmp_path / "out"
    shutil.copytree(sweep_dir, out)
    root = out / "smollm2-135m"
    kept = (root / "dense" / "results.json").stat().st_mtime_ns
    config = tmp_path / "sweep.yaml"
    config.write_text(
        "tasks: [freebaseqa]\nmethods: [ffnskip]\ntargets: [0.25]\ngrid: {threshold: [2.0]}\n"
        "model_args: {warmup: 2}\nlimit: 3\nbatch_size: 3\n"
    )
    assert main(["sweep", str(config), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cells_run"] == 1 and (root / "dense" / "results.json").stat().st_mtime_ns == kept
    never = {r["cell"]: r for r in summary["rows"]}["ffnskip-0.25-threshold2.0"]
    assert never["skip_ratio"] == 0
    results = json.loads((root / "ffnskip-0.25-threshold2.0" / "results.json").read_text())
    dense = json.loads((root / "dense" / "results.json").read_text())
    assert results["results"]["freebaseqa"] == dense["results"]["freebaseqa"]
    agree = results["agreement"]["freebaseqa"]
    assert agree["exact_match"] == 1.0 and agree["rougeL"] == pytest.approx(100)
    assert [s["first_divergence"] for s in agree["samples"]] == [None] * 3
    skipping = json.loads((root / "ffnskip-0.25" / "results.json").read_text())
    assert skipping["config"]["ffnskip"]["stats"]["skip_ratio_eligible"] > 0.2
    assert set(skipping["agreement"]["freebaseqa"]) >= {"exact_match", "rougeL", "samples"}
    flops = json.loads((root / "flops.json").read_text())
    assert [r["config"] for r in flops["rows"]] == ["dense", "ffnskip-0.25"]

    # an interrupted cell (a .partial folder, no results.json) is redone; finished ones are kept
    redo = root / "ffnskip-0.25-threshold2.0"
    redo.rename(root / "ffnskip-0.25-threshold2.0.partial")
    assert main(["sweep", str(config), "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["cells_run"] == 1
    assert (root / "dense" / "results.json").stat().st_mtime_ns == kept
    assert (redo / "results.json").exists() and not (root / "ffnskip-0.25-threshold2.0.partial").exists()


MC_TASK = """task: my_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: '{{{{question}}}}'
doc_to_choice: '{{{{choices}}}}'
doc_to_target: '{{{{label}}}}'
metric_list:
  - metric: acc
"""


def test_a_bad_config_fails_before_any_cell_and_a_users_task_folder_sweeps(tmp_path, capsys):
    """Every task and every cell's model_args are checked before the first cell runs (exit 2,
    one line naming the key and the valid choices); include_path adds the user's own YAMLs."""
    from lmeval_ffnskip.instruments.sweep import validate

    folder = tmp_path / "my_tasks"
    folder.mkdir()
    docs = [{"question": "Two plus two equals", "choices": [" four", " five"], "label": 0}] * 2
    (folder / "mc.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    (folder / "my_mc.yaml").write_text(MC_TASK.format(data=folder / "mc.jsonl"))
    config = tmp_path / "sweep.yaml"
    base = "include_path: [my_tasks]\nlimit: 2\ntargets: [0.25]\nmodel_args: {skip_prompt: true, warmup: 0}\n"
    config.write_text(base + "tasks: [my_mc]\nmethods: [teleport]\n")
    assert main(["sweep", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "\n" not in err and "cell teleport-0.25: method='teleport' is unknown; choose one of ffnskip" in err
    )
    assert not (tmp_path / "out").exists()  # not even the dense cell ran
    cfg = SweepConfig.load(config)
    manager = cfg.task_manager()
    bad = {
        "tasks: 'freebaseq' is not a task lm-eval knows; did you mean freebaseqa": {"tasks": ["freebaseq"]},
        "cell dense: unknown model_args warmpu; valid: ": {
            "methods": ["static"],
            "model_args": {"warmpu": 3},
        },
        "cell static-1.5: target_skip=1.5 is out of range": {"methods": ["static"], "targets": [1.5]},
        "bench: unknown options batch_size; valid: batch_sizes, dtype, ": {"bench": {"batch_size": [1]}},
        "cell ffnskip-0.9: target_skip=0.9 asks for 27 of 30 FFNs": {
            "methods": ["ffnskip"],
            "targets": [0.9],
        },
    }
    for message, change in bad.items():
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            validate(dataclasses.replace(cfg, **change), manager)
    config.write_text(base + "tasks: [my_mc]\nmethods: [static]\n")
    assert main(["sweep", str(config), "--out", str(tmp_path / "out")]) == 0
    cell = json.loads((tmp_path / "out" / "smollm2-135m" / "static-0.25" / "results.json").read_text())
    assert cell["results"]["my_mc"]["acc,none"] in (0.0, 0.5, 1.0) and cell["versions"]["torch"]
    assert cell["config"]["ffnskip"]["stats"]["skipped"] > 0
