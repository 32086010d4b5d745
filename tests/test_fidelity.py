"""`ffnskip fidelity`: teacher-forced agreement with the dense model and perplexity."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import DATA_DIR, tiny_model

from lmeval_ffnskip.cli import main
from lmeval_ffnskip.instruments.fidelity import continuations, measure
from lmeval_ffnskip.skip.policy import SkipPolicy


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
