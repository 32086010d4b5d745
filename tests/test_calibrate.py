"""`ffnskip calibrate`: the similarity curve, cold regions, the (threshold, k) search, profiles."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import DATA_DIR, refused_in_one_line, tiny_model

from lmeval_ffnskip.cli import main
from lmeval_ffnskip.harness.lm import FFNSkipLM
from lmeval_ffnskip.instruments import calibrate as cal
from lmeval_ffnskip.skip.engine import attach
from lmeval_ffnskip.skip.settings import SkipPolicy

SMALL = cal.CalibrationText(prompts=4, prompt_tokens=32, new_tokens=24)


def test_cold_regions_and_predicted_ratio_by_hand():
    mean = [0.1, 0.6, 0.95, 0.96, 0.97, 0.95, 0.96, 0.7]
    spread = [0.05, 0.05, 0.02, 0.02, 0.02, 0.02, 0.02, 0.1]
    # median of means 0.95, median spread 0.02: layers below 0.91 at the ends are cold
    assert cal.cold_regions(mean, spread) == (2, 1)
    assert cal.cold_regions([0.9] * 6, [0.01] * 6) == (1, 1)  # at least one at each end
    cos = torch.tensor(
        [
            [0.0, 0.95, 0.80, 0.99, 0.99, 0.0],  # checked layers 1..3: fires at 1 -> room 3
            [0.0, 0.80, 0.95, 0.80, 0.99, 0.0],  # fires at 2 -> room 2
            [0.0, 0.80, 0.80, 0.80, 0.99, 0.0],  # never fires (layer 4 is not checked)
        ]
    )
    assert cal.trigger_room(cos, (1, 1), 0.9).tolist() == [3, 2, 0]
    assert cal.predicted_ratio(cos, (1, 1), 0.9, 2) == pytest.approx((2 + 2 + 0) / 3 / 6)
    # 3 / 18 reachable at threshold 0.9 (k=2: 4/18 no; k=1: 2/18 ...) -> the highest threshold first
    threshold, k, ratio = cal.choose(cos, (1, 1), target=2 / 18, tolerance=0.001)
    assert (threshold, k) == (0.95, 1) and ratio == pytest.approx(2 / 18)


def test_search_bisects_the_threshold_where_decoding_fires_less_than_predicted(monkeypatch):
    """A flat, high curve (every layer above 0.99, like Gemma-3's): the thresholds come from the
    data, and the threshold for k is bisected on (here simulated) real decoding."""
    cos = 0.99 + 0.01 * torch.rand(400, 18, generator=torch.Generator().manual_seed(0))
    cos[:, 0] = cos[:, -1] = 0.5
    thresholds = cal.candidate_thresholds(cos, (1, 1))
    assert sum(0.99 < t < 1.0 for t in thresholds) > 100 and thresholds == sorted(thresholds, reverse=True)

    def decoded(model, batch, policy, new_tokens):  # fires as if the threshold were 0.002 higher
        return cal.predicted_ratio(cos, (1, 1), policy.threshold + 0.002, round(policy.target_skip * 18))

    monkeypatch.setattr(cal, "wikitext_prompts", lambda tok, settings: ([[1]], [[1]]))
    monkeypatch.setattr(cal, "_batch", lambda *args: {})
    monkeypatch.setattr(cal, "similarities", lambda *args: cos)
    monkeypatch.setattr(cal, "run_ratio", decoded)
    model = SimpleNamespace(device="cpu", config=SimpleNamespace(_name_or_path="flat"))
    profile = cal.calibrate(model, None, 0.25)
    assert profile["k"] == 5  # the smallest k that reaches 25% of 18 layers
    assert profile["tried"][0]["real"] < 0.24 and 1 < len(profile["tried"]) <= cal.MAX_TRIES
    assert abs(profile["calibration_ratio"] - 0.25) <= 0.01
    assert profile["heldout_ratio"] == profile["calibration_ratio"]


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox", "phi", "falcon"])
def test_similarities_predict_the_engines_first_decisions(model_type):
    """The first decoded token has a dense history, so its real skip counts are the predicted ones
    (in parallel layers too: calibration and the engine read the same stream)."""
    model = tiny_model(model_type, n_layers=10)
    batch = {"input_ids": torch.randint(3, 97, (4, 6)), "attention_mask": torch.ones(4, 6, dtype=torch.long)}
    cos = cal.similarities(model, batch, new_tokens=3)
    assert cos.shape == (4 * 2, 10) and cos.abs().max() <= 1 + 1e-6
    middle = cos[:4, 2:8].flatten().sort().values[11:13]  # fires for some tokens at some layers, not all
    threshold = float(middle.mean())  # between two similarities, so none sits on it (rounding ties)
    policy = SkipPolicy(threshold=threshold, warmup=0, cold_start=2, cold_end=2, target_skip=0.3)
    with torch.no_grad(), attach(model, policy, record=True) as engine:
        model.generate(**batch, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    first_step = engine.history[1].reshape(4, 10)
    expected = cal.trigger_room(cos[:4], (2, 2), threshold).clamp(max=3)
    assert first_step.sum(1).tolist() == expected.tolist()
    assert 0 < expected.sum() < 4 * 3


@pytest.mark.slow
def test_calibration_meets_the_target_on_held_out_prompts(smollm2, monkeypatch):
    monkeypatch.setenv("FFNSKIP_DATA_DIR", DATA_DIR)
    model, tok = smollm2
    profile = cal.calibrate(model, tok, 0.25, SMALL)
    assert abs(profile["heldout_ratio"] - 0.25) <= 0.02, profile["tried"]
    assert abs(profile["calibration_ratio"] - 0.25) <= SMALL.tolerance
    assert len(profile["layers"]) == 30 and profile["layers"][0]["mean"] < profile["layers"][15]["mean"]
    assert profile["policy"]["target_skip"] == profile["k"] / 30


def test_profiles_drive_the_model_and_are_cached(smollm2, tmp_path, monkeypatch):
    """A (quick, coarse) real profile drives --model ffnskip; it clashes with explicit settings;
    profiles of another depth or corrupt ones are refused; profile=auto calibrates once."""
    monkeypatch.setenv("FFNSKIP_DATA_DIR", DATA_DIR)
    model, tok = smollm2
    profile = cal.calibrate(model, tok, 0.25, cal.CalibrationText(prompts=2, prompt_tokens=16, new_tokens=8))
    assert profile["format"] == cal.PROFILE_FORMAT and profile["policy"]["target_skip"] == profile["k"] / 30
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    lm = FFNSkipLM(profile=str(path), warmup=2, batch_size=1, device="cpu")
    assert lm.policy.threshold == profile["policy"]["threshold"] and lm.engine.layout.k == profile["k"]
    assert lm.get_model_info()["ffnskip"]["profile"] == str(path)
    with pytest.raises(ValueError, match="drop threshold"):
        FFNSkipLM(profile=str(path), threshold=0.9, device="cpu")
    # spread takes the per-layer levels from a profile, else from a cached calibration
    spread = FFNSkipLM(profile=str(path), method="spread", cold_start=2, cold_end=2, device="cpu")
    assert spread.policy.calibration == cal.layer_calibration(profile) and spread.engine.layout.k == 8
    measured = []
    monkeypatch.setattr(cal, "cached_layer_calibration", lambda *a: measured.append(a) or ((0.9, 0.1),) * 30)
    spread = FFNSkipLM(method="spread", device="cpu")
    assert spread.policy.calibration == ((0.9, 0.1),) * 30 and len(measured) == 1
    with pytest.raises(ValueError, match="method=static uses none"):
        FFNSkipLM(profile=str(path), method="static", device="cpu")
    deeper = tmp_path / "deeper.json"
    deeper.write_text(json.dumps({**profile, "n_layers": 40}))
    with pytest.raises(ValueError, match="calibrated on a model with 40 layers; this one has 30"):
        FFNSkipLM(profile=str(deeper), device="cpu")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        FFNSkipLM(profile=str(corrupt), device="cpu")

    # profile=auto calibrates once per model and target, then reads the cache
    monkeypatch.setattr("lmeval_ffnskip.taskdata.data.cache_root", lambda: tmp_path / "cache")
    calls = []
    monkeypatch.setattr(cal, "calibrate", lambda *args: calls.append(args[2:]) or profile)
    cached = cal.cached_profile(model, tok, 0.25, SMALL)
    assert cal.cached_profile(model, tok, 0.25, SMALL) == cached and calls == [(0.25, SMALL)]
    assert json.loads(cached.read_text()) == profile
    assert cal.cached_profile(model, tok, 0.4, SMALL) != cached and len(calls) == 2
    auto = FFNSkipLM(profile="auto", target_skip=0.25, device="cpu")
    assert (
        calls[-1] == (0.25, cal.CalibrationText()) and auto.policy.threshold == profile["policy"]["threshold"]
    )
    assert auto.profile.startswith(str(tmp_path / "cache" / "profiles"))


def test_calibrate_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FFNSKIP_DATA_DIR", DATA_DIR)
    assert main(["calibrate", "--target", "1.5"]) == 2
    assert "out of range" in capsys.readouterr().err
    monkeypatch.setenv("FFNSKIP_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr("lmeval_ffnskip.taskdata.data.urllib.request.urlopen", _offline)
    assert main(["calibrate", "--prompts", "2", "--new-tokens", "4"]) == 2
    assert "wikitext2" in capsys.readouterr().err


def test_calibrate_a_saved_parallel_checkpoint(tmp_path, monkeypatch, capsys):
    """``ffnskip calibrate --pretrained DIR`` on a tiny random GPT-NeoX (parallel layers): a curve
    of one similarity per layer, and settings that skip on calibration and held-out prompts."""
    from transformers import AutoTokenizer

    from lmeval_ffnskip.inputs.checkpoints import resolve

    monkeypatch.setenv("FFNSKIP_DATA_DIR", DATA_DIR)
    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    model = tiny_model("gpt_neox", n_layers=8, vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path / "neox")
    tokenizer.save_pretrained(tmp_path / "neox")
    out = tmp_path / "profile.json"
    argv = ["calibrate", "--pretrained", str(tmp_path / "neox"), "--target", "0.25", "--prompts", "2",
            "--prompt-tokens", "8", "--new-tokens", "6", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    profile = json.loads(out.read_text())
    assert profile["n_layers"] == len(profile["layers"]) == 8
    assert all(-1 <= layer["min"] <= layer["mean"] <= 1 for layer in profile["layers"])
    assert profile["calibration_ratio"] > 0 and profile["heldout_ratio"] > 0


def _offline(*args: object, **kwargs: object) -> None:
    raise OSError("network unreachable")


BAD_FLAGS = {
    ("--target", "1.5"): "--target=1.5 is out of range: it must be a number in (0, 1)",
    ("--prompts", "0"): "--prompts=0 is out of range: it must be an integer >= 1",
    ("--prompt-tokens", "-4"): "--prompt-tokens=-4 is out of range: it must be an integer >= 1",
    ("--new-tokens", "1"): "--new-tokens=1 is out of range: it must be an integer >= 2",
    ("--tolerance", "-0.5"): "--tolerance=-0.5 is out of range: it must be a number in [0, 1]",
}


@pytest.mark.parametrize("flags", BAD_FLAGS)
def test_bad_flags_exit_2_in_one_line_before_any_weights_load(flags, no_weights, capsys):
    refused_in_one_line(["calibrate", *flags], BAD_FLAGS[flags], capsys)
