"""`method=spread`: one skip per group of non-cold layers, placed by per-layer calibrated levels."""

from __future__ import annotations

import pytest
import torch
from conftest import alone_and_batched, forced_and_stepwise, tiny_model
from test_engine import _count_ffn_rows, _ids

from lmeval_ffnskip.calibrate import similarities
from lmeval_ffnskip.engine import attach
from lmeval_ffnskip.policy import SkipPolicy

N_LAYERS = 12


def _policy(calibration: tuple[tuple[float, float], ...], **kw: object) -> SkipPolicy:
    args = {"method": "spread", "skip_prompt": True, "warmup": 2, "target_skip": 0.25, "cold_start": 2}
    return SkipPolicy(**{**args, "cold_end": 1, "calibration": calibration, **kw})


def _measured_calibration(model: torch.nn.Module) -> tuple[tuple[float, float], ...]:
    """The tiny model's own per-layer similarity (mean, std): decisions then differ per token."""
    ids = _ids(4, 8, seed=3)
    cos = similarities(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, 16)
    return tuple(zip(cos.mean(0).tolist(), cos.std(0).tolist(), strict=True))


@torch.no_grad()
def test_one_skip_per_group_at_the_first_or_last_layer_by_level():
    model = tiny_model("llama", n_layers=N_LAYERS)
    always = _policy(((-5.0, 0.1),) * N_LAYERS)  # every similarity reaches its level
    never = _policy(((5.0, 0.1),) * N_LAYERS)  # none does
    assert always.layout(N_LAYERS).groups() == [[2, 3, 4], [5, 6, 7], [8, 9, 10]]
    patterns = {}
    for name, policy in (("always", always), ("never", never)):
        rows = _count_ffn_rows(model)
        with attach(model, policy, record=True) as engine:
            model(_ids(2, 10))
        skip = engine.history[0]
        assert not skip[:, :2].any() and (skip[:, 2:].sum(-1) == 3).all()
        assert sum(rows) == engine.stats.tokens * N_LAYERS - engine.stats.skipped  # no FFN work
        patterns[name] = (skip[0, 2].nonzero().squeeze(1).tolist(), engine.stats.summary())
    # high at the layer before a group: its first FFN is skipped; never high: its last one
    assert patterns["always"][0] == [2, 5, 8] and patterns["always"][1]["never_reached_threshold"] == 0
    assert patterns["never"][0] == [4, 7, 10] and patterns["never"][1]["never_reached_threshold"] == 1
    assert patterns["never"][1]["skip_ratio_eligible"] == 3 / N_LAYERS


def test_hot_layers_always_run_and_calibration_is_required():
    calibration = [(0.9, 0.01)] * N_LAYERS
    calibration[6] = (0.5, 0.01)  # far below the typical layer: hot
    layout = _policy(tuple(calibration)).layout(N_LAYERS)
    assert layout.hot == (6,) and all(6 not in g for g in layout.groups())
    with pytest.raises(ValueError, match="profile=auto"):
        SkipPolicy(method="spread").layout(N_LAYERS)
    with pytest.raises(ValueError, match="can skip at most 8"):
        _policy(tuple(calibration), target_skip=0.75).layout(N_LAYERS)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
@torch.no_grad()
def test_teacher_forced_pass_equals_decoding_and_rows_decide_alone(arch):
    model = tiny_model(arch, n_layers=N_LAYERS)
    policy = _policy(_measured_calibration(model))
    ids = _ids(1, 24)
    (engine, full), (stepwise, steps) = forced_and_stepwise(model, policy, ids)
    assert torch.equal(torch.cat(stepwise.history, dim=1), engine.history[0])
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-4)
    assert 0 < engine.stats.never_fired < engine.stats.eligible  # the levels split the tokens

    prompts = [_ids(1, n, seed=n)[0] for n in (3, 9, 5, 12)]
    decoding = SkipPolicy(**{**policy.__dict__, "skip_prompt": False})
    with attach(model, decoding):
        singles, together = alone_and_batched(model, prompts, 10)
    assert torch.equal(together, singles)
