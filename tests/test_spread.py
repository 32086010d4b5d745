"""`method=spread`: one skip per group of non-cold layers, placed by per-layer calibrated levels."""

from __future__ import annotations

import pytest
import torch
from conftest import alone_and_batched, forced_and_stepwise, tiny_model
from test_engine import count_ffn_rows, token_ids

from lmeval_ffnskip.instruments.calibrate import similarities
from lmeval_ffnskip.skip.engine import attach
from lmeval_ffnskip.skip.rules.spread import groups, position_hash
from lmeval_ffnskip.skip.settings import SkipPolicy

N_LAYERS = 12


def _policy(calibration: tuple[tuple[float, float], ...], **kw: object) -> SkipPolicy:
    args = {"method": "spread", "skip_prompt": True, "warmup": 2, "target_skip": 0.25, "cold_start": 2}
    return SkipPolicy(**{**args, "cold_end": 1, "calibration": calibration, **kw})


def _measured_calibration(model: torch.nn.Module) -> tuple[tuple[float, float], ...]:
    """The tiny model's own per-layer similarity (mean, std), the means raised by two std so that
    levels are reached rarely enough that some tokens never reach one: decisions differ per token."""
    ids = token_ids(4, 8, seed=3)
    cos = similarities(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, 16)
    return tuple((m + 2 * s, s) for m, s in zip(cos.mean(0).tolist(), cos.std(0).tolist(), strict=True))


@torch.no_grad()
def test_one_skip_per_group_of_the_tokens_cut_at_the_first_or_last_layer_by_level():
    model = tiny_model("llama", n_layers=N_LAYERS)
    # a seed under which positions 2..9 (the eligible ones) include cut offsets 0 and 1
    seed = next(s for s in range(1000) if {position_hash(s, p) % 9 for p in range(2, 10)} >= {0, 1})
    always = _policy(((-5.0, 0.1),) * N_LAYERS, seed=seed)  # every similarity reaches its level
    never = _policy(((5.0, 0.1),) * N_LAYERS, seed=seed)  # none does
    assert groups(always.layout(N_LAYERS)) == [[2, 3, 4], [5, 6, 7], [8, 9, 10]]
    # offset 1 rotates the groups by one layer: {3, 4, 5}, {6, 7, 8}, {9, 10, 2}
    expected = {"always": {0: [2, 5, 8], 1: [2, 4, 6]}, "never": {0: [4, 7, 10], 1: [5, 8, 10]}}
    for name, policy in (("always", always), ("never", never)):
        rows = count_ffn_rows(model)
        with attach(model, policy, record=True) as engine:
            model(token_ids(2, 10))
        skip = engine.history[0]
        assert not skip[:, :2].any() and (skip[:, 2:].sum(-1) == 3).all()
        assert sum(rows) == engine.stats.tokens * N_LAYERS - engine.stats.skipped  # no FFN work
        seen = {}
        for pos in range(2, 10):
            offset = position_hash(seed, pos) % 9
            layers = skip[0, pos].nonzero().squeeze(1).tolist()
            assert skip[1, pos].nonzero().squeeze(1).tolist() == layers  # same position, same cut
            seen.setdefault(offset, layers)
            assert seen[offset] == layers
        assert {o: seen[o] for o in (0, 1)} == expected[name]
        assert engine.stats.summary()["never_reached_threshold"] == (1 if name == "never" else 0)
        assert engine.stats.summary()["skip_ratio_eligible"] == 3 / N_LAYERS
    # tokens at different positions skip different layers: no FFN is dropped for every token
    assert len({tuple(v) for v in seen.values()}) > 1


def test_hot_layers_always_run_and_calibration_is_required():
    calibration = [(0.9, 0.01)] * N_LAYERS
    calibration[6] = (0.5, 0.01)  # far below the typical layer: hot
    layout = _policy(tuple(calibration)).layout(N_LAYERS)
    assert layout.hot == (6,) and all(6 not in g for g in groups(layout))
    with pytest.raises(ValueError, match="profile=auto"):
        SkipPolicy(method="spread").layout(N_LAYERS)
    with pytest.raises(ValueError, match="can skip at most 8"):
        _policy(tuple(calibration), target_skip=0.75).layout(N_LAYERS)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt_neox", "gptj"])  # + parallel layers
@torch.no_grad()
def test_teacher_forced_pass_equals_decoding_and_rows_decide_alone(arch):
    model = tiny_model(arch, n_layers=N_LAYERS)
    policy = _policy(_measured_calibration(model))
    ids = token_ids(1, 24)
    (engine, full), (stepwise, steps) = forced_and_stepwise(model, policy, ids)
    assert torch.equal(torch.cat(stepwise.history, dim=1), engine.history[0])
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-4)
    assert 0 < engine.stats.never_fired < engine.stats.eligible  # the levels split the tokens

    prompts = [token_ids(1, n, seed=n)[0] for n in (3, 9, 5, 12)]
    decoding = SkipPolicy(**{**policy.__dict__, "skip_prompt": False})
    with attach(model, decoding):
        singles, together = alone_and_batched(model, prompts, 10)
    assert torch.equal(together, singles)
