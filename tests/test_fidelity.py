"""`ffnskip fidelity`: teacher-forced agreement with the dense model and perplexity."""

from __future__ import annotations

import json
import math
from unittest import mock

import pytest
import torch
from conftest import DATA_DIR, refused_in_one_line, tiny_model

from lmeval_ffnskip.cli import main
from lmeval_ffnskip.instruments.fidelity import continuations, measure
from lmeval_ffnskip.instruments.options import FidelityOptions
from lmeval_ffnskip.skip.settings import SkipPolicy


def test_dense_never_firing_and_skipping_rows():
    model = tiny_model("llama", n_layers=8)
    sequences = continuations(model, torch.randint(3, 97, (3, 5)), new_tokens=20)
    assert sequences.shape == (3, 25)
    policies = {
        "never": SkipPolicy(threshold=2.0),
        "random-0.5": SkipPolicy(method="random", target_skip=0.5),
    }
    dense, never, skipping = measure(model, sequences, policies, warmup=5)
    with torch.no_grad():
        logits = model(sequences).logits[:, 5:-1]
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), sequences[:, 6:].flatten())
    assert dense.top1_agreement == 1.0 and dense.perplexity == pytest.approx(math.exp(nll), rel=1e-5)
    assert never.top1_agreement == 1.0 and never.perplexity == pytest.approx(dense.perplexity, rel=1e-6)
    assert never.skip_ratio == 0
    assert skipping.skip_ratio == pytest.approx(0.5) and skipping.top1_agreement < 1.0
    assert skipping.perplexity != pytest.approx(dense.perplexity)


def test_fidelity_cli_on_smollm2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FFNSKIP_DATA_DIR", DATA_DIR)
    out = tmp_path / "fidelity.json"
    args = ["fidelity", "--methods", "ffnskip,random", "--targets", "0.25", "--sequences", "2"]
    assert main([*args, "--length", "48", "--warmup", "8", "--json", str(out)]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["dense"]["top1_agreement"] == 1.0
    assert rows["ffnskip-0.25"]["skip_ratio"] == pytest.approx(8 / 30)
    assert 0 < rows["random-0.25"]["top1_agreement"] < 1
    assert main([*args, "--length", "100000"]) == 2
    assert "lower --length" in capsys.readouterr().err


BAD_FLAGS = {
    ("--sequences", "0"): "--sequences=0 is out of range: it must be an integer >= 1",
    ("--length", "1"): "--length=1 is out of range: it must be an integer >= 2",
    ("--length", "16"): "--length=16 is out of range: it must exceed --warmup + 1 = 33",
    ("--warmup", "-1"): "--warmup=-1 is out of range: it must be an integer >= 0",
    ("--source", "continuations", "--warmup", "0", "--length", "8"): "--warmup=0 is out of range",
    ("--cold-start", "-1"): "--cold-start=-1 is out of range: it must be an integer >= 0",
    ("--targets", "abc"): "--targets='abc' is invalid: it must be a list of numbers in [0, 1], comma",
    ("--methods", "ffnskip,teleport"): "--methods: method='teleport' is unknown; choose one of ffnskip",
}


@pytest.mark.parametrize("flags", BAD_FLAGS)
def test_bad_flags_exit_2_in_one_line_before_any_weights_load(flags, no_weights, capsys):
    refused_in_one_line(["fidelity", *flags], BAD_FLAGS[flags], capsys)


def test_run_fidelity_loads_on_its_device_and_feeds_the_model_there(monkeypatch):
    from lmeval_ffnskip.inputs import checkpoints
    from lmeval_ffnskip.instruments import fidelity

    model = tiny_model("llama", n_layers=4)
    text, loads, fed = mock.MagicMock(), [], []
    monkeypatch.setattr(checkpoints, "load", lambda *args: loads.append(args) or (model, None))
    monkeypatch.setattr(fidelity, "wikitext_sequences", lambda tokenizer, count, length: text)
    monkeypatch.setattr(fidelity, "measure", lambda model, ids, policies, warmup: fed.append(ids) or [])
    payload = fidelity.run_fidelity(
        FidelityOptions(pretrained="tiny", device="cpu", methods=(), length=8, warmup=2)
    )
    assert loads == [("tiny", "cpu")] and payload["device"] == "cpu"
    text.to.assert_called_once_with(model.device)  # the sequences go where the model is
    assert fed == [text.to.return_value]
