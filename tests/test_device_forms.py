"""Every built-in FFN rule's device form (what the compiled step decides with) makes its host
rule's decisions (what the eager engine decides with), given the same similarities: one test per
rule, found in ``BUILTINS``, so a new rule with a device form is checked without a line here.

The host record is driven as the eager engine drives it (``begin``, then per hooked layer
``enter``, ``checks_at``, ``measured`` for the rows in ``checking``); the form is driven as the
compiled step drives it, eagerly on CPU tensors, with the similarity of a row that skipped the
block at 1 (what cos(h, h + 0) is in the step)."""

from __future__ import annotations

import random

import pytest
import torch

from lmeval_ffnskip.skip.rows import PassSkips
from lmeval_ffnskip.skip.rule import FFNRule
from lmeval_ffnskip.skip.rules import BUILTINS, rule_class
from lmeval_ffnskip.skip.settings import SkipPolicy

N_LAYERS, BATCH, PASSES = 12, 6, 40
WITH_FORMS = [
    method
    for method in BUILTINS
    if issubclass(rule := rule_class(method), FFNRule) and rule.device is not FFNRule.device
]


def _policy(method: str, target: float) -> SkipPolicy:
    calibration = tuple((0.9 + 0.005 * i, 0.03) for i in range(N_LAYERS))
    return SkipPolicy(
        method=method, target_skip=target, warmup=0, threshold=0.97, seed=5, calibration=calibration
    )


def _host(rule: FFNRule, eligible: list[bool], positions: list[int], cos: list[list[float]]) -> PassSkips:
    record = rule.begin(eligible, positions)
    for layer in sorted(set(rule.checked) | set(rule.skippable)):
        record.enter(layer)
        if record.checks_at(layer):
            rows = record.checking
            record.measured(layer, rows, [cos[layer][row] for row in rows])
    return record


def _device(rule: FFNRule, eligible: list[bool], positions: list[int], cos: list[list[float]]) -> tuple:
    form = rule.device()
    state = form.start(torch.tensor(eligible), form.inputs(eligible, positions))
    mask = torch.zeros(len(eligible), N_LAYERS, dtype=torch.bool)
    for layer in form.layers:
        skip = torch.zeros(len(eligible), dtype=torch.bool)
        if layer in form.skippable:
            skip, state = form.enter(layer, state)
            mask[:, layer] = skip
        if form.checks_at(layer):
            measured = torch.tensor(cos[layer], dtype=torch.float64).masked_fill(skip, 1.0)
            state = form.measured(layer, state, measured)
    return mask, form.never(state)


def test_the_rules_with_device_forms_are_found() -> None:
    assert {"dense", "static", "random", "ffnskip", "spread"} <= set(WITH_FORMS)


@pytest.mark.parametrize("target", [0.25, 0.5])
@pytest.mark.parametrize("method", WITH_FORMS)
def test_device_form_decides_as_the_rule(method: str, target: float) -> None:
    policy = _policy(method, target)
    rule = policy.rule(policy, policy.layout(N_LAYERS))
    draw = random.Random(f"{method}-{target}")
    skipped = never = 0
    for _ in range(PASSES):
        eligible = [draw.random() < 0.8 for _ in range(BATCH)]
        positions = [draw.randrange(8, 200) for _ in range(BATCH)]
        # similarities around the threshold and the levels: some rows fire early, some late, some never
        cos = [[draw.uniform(0.8, 1.0) for _ in range(BATCH)] for _ in range(N_LAYERS)]
        if not any(eligible):
            continue
        record = _host(rule, eligible, positions, cos)
        mask, rows_never = _device(rule, eligible, positions, cos)
        assert torch.equal(mask, record.mask()), (method, eligible, positions)
        assert rows_never.nonzero().flatten().tolist() == sorted(record.never_rows())
        skipped += int(mask.sum())
        never += len(record.never_rows())
    assert skipped > 0 or method == "dense"
    if policy.rule.threshold_trigger or method == "spread":  # the draws reached both outcomes
        assert 0 < never < PASSES * BATCH
