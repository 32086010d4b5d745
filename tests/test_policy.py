"""Policy settings: validation, coercion from model_args, eligibility and layouts."""

from __future__ import annotations

import pytest
import torch

import lmeval_ffnskip
from lmeval_ffnskip.skip.layout import default_cold
from lmeval_ffnskip.skip.settings import SkipPolicy


def test_every_exported_method_runs():
    from conftest import tiny_model

    from lmeval_ffnskip.skip.engine import attach

    methods = lmeval_ffnskip.METHODS
    assert methods == ("ffnskip", "spread", "dense", "random", "static", "shortgpt", "skipdecode")
    assert set(lmeval_ffnskip.LAYER_METHODS) < set(methods)
    model = tiny_model("llama", n_layers=8)
    ids = torch.randint(3, 90, (1, 6))
    measured = {"calibration": ((0.9, 0.05),) * 8, "influence": tuple(range(8))}
    for method in methods:
        policy = SkipPolicy(method=method, warmup=1, threshold=-1.0, horizon=2, **measured)
        with attach(model, policy) as engine:
            model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert (engine.stats.skipped > 0) == (method != "dense"), method


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "fast"}, "method='fast' is unknown; choose one of ffnskip, spread, dense"),
        ({"threshold": -1.5}, r"threshold=-1.5 is out of range"),
        ({"target_skip": 1.2}, r"target_skip=1.2 is out of range \[0, 1\]"),
        ({"warmup": -1}, "warmup=-1 is out of range"),
        ({"cold_start": -2}, "cold_start=-2 is out of range"),
        ({"refresh_every": 1}, "refresh_every=1"),
    ],
)
def test_out_of_range_values_name_the_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SkipPolicy(**kwargs)


def test_from_args_coerces_lm_eval_strings():
    policy = SkipPolicy.from_args(
        {"threshold": "0.95", "warmup": 10, "skip_prompt": "true", "cold_start": "None", "target_skip": 0.3}
    )
    assert policy == SkipPolicy(threshold=0.95, warmup=10, skip_prompt=True, cold_start=None, target_skip=0.3)
    with pytest.raises(ValueError, match="warmup='many' is not a valid int"):
        SkipPolicy.from_args({"warmup": "many"})
    with pytest.raises(ValueError, match="skip_prompt='maybe' is not a valid bool"):
        SkipPolicy.from_args({"skip_prompt": "maybe"})


def test_layout_scales_cold_layers_and_checks_depth():
    assert default_cold(40) == 5 and default_cold(30) == 4 and default_cold(18) == 2
    layout = SkipPolicy(target_skip=0.25).layout(30)
    assert (layout.cold_start, layout.cold_end, layout.k, layout.mid) == (4, 4, 8, range(4, 26))
    with pytest.raises(ValueError, match="can skip at most 21"):
        SkipPolicy(target_skip=0.75).layout(30)
    with pytest.raises(ValueError, match="exceeds the model's 6 layers"):
        SkipPolicy(cold_start=4, cold_end=4).layout(6)
    assert SkipPolicy(method="random", target_skip=1.0).layout(30).k == 30


def _eligible(policy: SkipPolicy, since: list[int], real: list[bool]) -> list[bool]:
    return policy.rule(policy, policy.layout(12)).eligible(since, real)


def test_eligibility_warmup_refresh_and_padding():
    since = list(range(-2, 10))
    real = [False] + [True] * 11
    got = _eligible(SkipPolicy(warmup=3, refresh_every=3), since, real)
    # since 3,4 eligible, 5 refresh (full), 6,7 eligible, 8 refresh, 9 eligible
    assert got == [False] * 5 + [True, True, False, True, True, False, True]
    assert _eligible(SkipPolicy(warmup=0), since, real) == [False, False] + [True] * 10  # the prompt never
    assert not any(_eligible(SkipPolicy(method="dense", warmup=0), since, real))
