"""`ffnskip sweep`: cells, resumability, atomic cells, agreement with the dense cell."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR, refused_in_one_line, tiny_model

from lmeval_ffnskip.cli import main
from lmeval_ffnskip.inputs import checkpoints
from lmeval_ffnskip.skip import provenance
from lmeval_ffnskip.sweep import run as sweep
from lmeval_ffnskip.sweep.config import INSTRUMENTS, SHIPPED, SweepConfig, cells
from lmeval_ffnskip.sweep.resume import model_slug


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
    from lmeval_ffnskip.sweep.config import validate

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
    assert "\n" not in err and "methods: method='teleport' is unknown; choose one of ffnskip" in err
    assert not (tmp_path / "out").exists()  # not even the dense cell ran
    config.write_text(base + "tasks: [my_mc]\nmethods: [static]\n")
    cfg = SweepConfig.load(config)
    manager = cfg.task_manager()
    bad = {
        "tasks: 'freebaseq' is not a task lm-eval knows; did you mean freebaseqa": {"tasks": ["freebaseq"]},
        "cell dense: unknown model_args for --model ffnskip: warmpu. Valid: method": {
            "methods": ["static"],
            "model_args": {"warmpu": 3},
        },
        "targets=[1.5] is out of range: it must be a list of numbers in [0, 1]": {"targets": [1.5]},
        "bench: unknown options batch_size; valid: batch_sizes, compile, dtype, ": {
            "bench": {"batch_size": [1]}
        },
        "cell ffnskip-0.9: target_skip=0.9 asks for 27 of 30 FFNs": {
            "methods": ["ffnskip"],
            "targets": [0.9],
        },
    }
    for message, change in bad.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            validate(dataclasses.replace(cfg, **change), manager)
    config.write_text(base + "tasks: [my_mc]\nmethods: [static]\n")
    assert main(["sweep", str(config), "--out", str(tmp_path / "out")]) == 0
    cell = json.loads((tmp_path / "out" / "smollm2-135m" / "static-0.25" / "results.json").read_text())
    assert cell["results"]["my_mc"]["acc,none"] in (0.0, 0.5, 1.0) and cell["versions"]["torch"]
    assert cell["config"]["ffnskip"]["stats"]["skipped"] > 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random Llama with a character-level tokenizer, saved where ``pretrained=`` loads it."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in map(chr, range(32, 127)) if c not in "`~"]  # 93 + 4 specials: the vocab of 97
    vocab = {t: i for i, t in enumerate(["<pad>", "</s>", "<s>", "<unk>", *chars])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    specials = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    path = tmp_path_factory.mktemp("tiny") / "llama"
    tiny_model("llama").save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **specials).save_pretrained(path)
    return str(path)


TINY_SWEEP = """models: [{model}]
tasks: [freebaseqa]
methods: [ffnskip]
targets: [0.25]
gen_kwargs: max_gen_toks=6
batch_size: 2
fidelity: {{methods: [ffnskip], targets: [0.25], sequences: 2, length: 24, warmup: 8}}
"""


def _sweep(config: Path, out: Path, capsys: pytest.CaptureFixture) -> tuple[dict, list[str]]:
    """Run ``ffnskip sweep``: its summary.json and its stderr lines about reruns."""
    capsys.readouterr()
    assert main(["sweep", str(config), "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ffnskip sweep:")]
    return json.loads((out / "summary.json").read_text()), lines


def test_a_resumed_sweep_reruns_what_other_settings_made(tiny, tmp_path, monkeypatch, capsys):
    """Cells and per-model JSONs record what made them: an unchanged rerun runs nothing, changed
    settings rerun exactly what they change (one line each naming the keys), and agreement follows
    the dense cell it was measured against."""
    monkeypatch.setenv("FFNSKIP_DATA_DIR", DATA_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(provenance, "source_commit", lambda: "c0ffee")
    config, out = tmp_path / "sweep.yaml", tmp_path / "out"
    base = TINY_SWEEP.format(model=tiny)
    config.write_text(
        base + "limit: 4\nmodel_args: {warmup: 4}\nflops: {context: 16, targets: [0.25], new_tokens: 4}\n"
    )
    summary, _ = _sweep(config, out, capsys)
    assert summary["cells_run"] == 2
    root = out / model_slug(tiny)
    assert json.loads((root / "flops.json").read_text())["device"] == "cpu"
    assert json.loads((root / "fidelity.json").read_text())["device"] == "cpu"
    extras = {name: (root / f"{name}.json").stat().st_mtime_ns for name in ("flops", "fidelity")}

    summary, lines = _sweep(config, out, capsys)  # unchanged: nothing reruns
    assert summary["cells_run"] == 0 and lines == []
    assert {name: (root / f"{name}.json").stat().st_mtime_ns for name in extras} == extras

    config.write_text(
        base + "limit: 2\nmodel_args: {warmup: 1, cold_start: 2}\n"
        "flops: {context: 16, targets: [0.25], new_tokens: 5}\n"
    )
    summary, lines = _sweep(config, out, capsys)
    assert summary["cells_run"] == 2 and len(lines) == 3, lines
    for cell in ("dense", "ffnskip-0.25"):
        (line,) = [line for line in lines if f" {cell} " in line]
        assert "limit (4 -> 2)" in line and "model_args.warmup (4 -> 1)" in line
        assert "model_args.cold_start (unset -> 2)" in line
    (line,) = [line for line in lines if "flops.json" in line]
    assert "new_tokens (4 -> 5)" in line
    assert (root / "fidelity.json").stat().st_mtime_ns == extras["fidelity"]  # its settings held
    assert json.loads((root / "flops.json").read_text())["sweep"]["options"]["new_tokens"] == 5
    assert {r["freebaseqa/sample_len"] for r in summary["rows"]} == {2}
    skipping = json.loads((root / "ffnskip-0.25" / "results.json").read_text())
    assert skipping["config"]["ffnskip"]["policy"]["warmup"] == 1
    assert skipping["config"]["ffnskip"]["policy"]["cold_start"] == 2
    assert len(skipping["agreement"]["freebaseqa"]["samples"]) == 2
    assert not list(root.glob("*.partial"))

    # a dense cell run again (here: lost) makes every cell's agreement be measured again
    skipping["agreement"]["freebaseqa"]["exact_match"] = -1.0
    (root / "ffnskip-0.25" / "results.json").write_text(json.dumps(skipping))
    shutil.rmtree(root / "dense")
    summary, lines = _sweep(config, out, capsys)
    assert summary["cells_run"] == 1 and lines == []
    skipping = json.loads((root / "ffnskip-0.25" / "results.json").read_text())
    dense = json.loads((root / "dense" / "results.json").read_text())
    assert skipping["agreement"]["freebaseqa"]["exact_match"] >= 0
    assert skipping["agreement_dense_run"] == dense["sweep_cell"]["run"]

    # another commit reruns everything; a modified checkout's results are reused with a warning
    monkeypatch.setattr(provenance, "source_commit", lambda: "c0ffee+modified")
    summary, lines = _sweep(config, out, capsys)
    assert summary["cells_run"] == 2 and len(lines) == 4
    assert all('versions.lmeval-ffnskip commit ("c0ffee" -> "c0ffee+modified")' in line for line in lines)
    summary, lines = _sweep(config, out, capsys)
    assert summary["cells_run"] == 0 and len(lines) == 1
    assert "reused 4 finished results of c0ffee+modified" in lines[0]


class _Loaded(Exception):
    """Raised where a model would load."""


def test_every_instrument_of_a_sweep_loads_its_model_on_the_sweeps_device(tmp_path, monkeypatch):
    """FLOPs, bench, calibration and fidelity all get the config's device and load the model there."""
    devices = []

    def load(pretrained: str, device: str = "cpu", dtype: str = "float32", check: object = None) -> None:
        devices.append(device)
        raise _Loaded

    monkeypatch.setattr(checkpoints, "load", load)
    cfg = SweepConfig(tasks=["freebaseqa"], device="cuda:3")
    for name in INSTRUMENTS:
        with pytest.raises(_Loaded):
            sweep._extras(dataclasses.replace(cfg, **{name: {}}), "smollm2-135m", tmp_path, print)
    assert devices == ["cuda:3"] * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_flops_and_fidelity_run_on_the_device_they_are_given(tiny, monkeypatch):
    from lmeval_ffnskip.instruments.fidelity import run_fidelity
    from lmeval_ffnskip.instruments.flops import run_flops
    from lmeval_ffnskip.instruments.options import FidelityOptions, FlopsOptions

    monkeypatch.setenv("FFNSKIP_DATA_DIR", DATA_DIR)
    flops = run_flops(FlopsOptions(pretrained=tiny, device="cuda", context=16, targets=(0.25,), new_tokens=4))
    assert flops["device"] == "cuda" and flops["rows"][1]["ffn"] < flops["rows"][0]["ffn"]
    fidelity = run_fidelity(
        FidelityOptions(
            pretrained=tiny,
            device="cuda",
            methods=("ffnskip",),
            targets=(0.25,),
            sequences=2,
            length=24,
            warmup=8,
        )
    )
    assert fidelity["device"] == "cuda" and fidelity["rows"][0]["top1_agreement"] == 1.0
    fidelity = run_fidelity(FidelityOptions(
        pretrained=tiny, device="cuda", methods=("static",), targets=(0.25,), source="continuations",
        sequences=2, length=24, warmup=8,
    ))  # fmt: skip
    assert fidelity["shape"] == [2, 24]


BAD_CONFIGS = {  # each after `tasks: [freebaseqa]` unless it names tasks itself
    "tasks: [freebaseqa\nlimit: 2": "is not valid YAML: expected ',' or ']', but got ':' at line 2, column 6",
    "limit: -3": "limit=-3 is out of range: it must be a number > 0",
    "limit: four": "limit='four' is invalid: it must be a number > 0",
    "tasks: freebaseqa": "tasks='freebaseqa' is invalid: it must be a non-empty list of names",
    "targets: 0.25": "targets=0.25 is invalid: it must be a list of numbers in [0, 1]",
    "targets: [0.25, 1.5]": "targets=[0.25, 1.5] is out of range: it must be a list of numbers",
    "batch_size: 0": "batch_size=0 is out of range: it must be an integer >= 1",
    "model_args: [warmup]": "model_args=['warmup'] is invalid: it must be a mapping",
    "model_args: {warmup: -1}": "cell dense: warmup=-1 is out of range: it must be >= 0",
    "flops: {context: 1}": "flops.context=1 is out of range: it must be an integer >= 2",
    "bench: {reps: 0}": "bench.reps=0 is out of range: it must be an integer >= 1",
    "bench: {batch_sizes: [1, 0]}": "bench.batch_sizes=[1, 0] is out of range",
    "bench: {new_tokens: 1}": "bench.new_tokens=1 is out of range: it must be an integer >= 2",
    "bench: {methods: [teleport]}": "bench.methods: method='teleport' is unknown",
    "calibrate: {prompts: 0}": "calibrate.prompts=0 is out of range",
    "fidelity: {sequences: many}": "fidelity.sequences='many' is invalid",
    "fidelity: {length: 20}": "fidelity.length=20 is out of range: it must exceed fidelity.warmup + 1",
    "fidelity: 3": "fidelity=3 is invalid: it must be a mapping of its options",
}


@pytest.mark.parametrize("text", BAD_CONFIGS)
def test_a_bad_config_exits_2_in_one_line_before_any_weights_load(text, tmp_path, no_weights, capsys):
    config, out = tmp_path / "sweep.yaml", tmp_path / "out"
    config.write_text(("" if text.startswith("tasks") else "tasks: [freebaseqa]\n") + text + "\n")
    err = refused_in_one_line(["sweep", str(config), "--out", str(out)], BAD_CONFIGS[text], capsys)
    assert err.startswith(f"ffnskip sweep: {config}: ")
    assert not out.exists()  # nothing started: no .partial folder either
