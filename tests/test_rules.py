"""The rule contract and its registry: each built-in rule's decisions where they change, rules
from outside the package (``module:Name``, entry points) and their own settings."""

from __future__ import annotations

import math
import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest
import torch
from conftest import tiny_model
from test_engine import token_ids

import lmeval_ffnskip
from lmeval_ffnskip.skip import rules
from lmeval_ffnskip.skip.engine import attach
from lmeval_ffnskip.skip.naming import config_name, method_of
from lmeval_ffnskip.skip.policy import ALWAYS, CHECKS_ONLY, NEVER
from lmeval_ffnskip.skip.rule import FFNRule, LayerRule
from lmeval_ffnskip.skip.rules.spread import position_hash
from lmeval_ffnskip.skip.settings import SkipPolicy, setting_names

N_LAYERS = 12

# the example of an external rule: the FFN of every other non-cold layer, for every eligible token
EVERY_OTHER = """
from dataclasses import dataclass

from lmeval_ffnskip.skip.rows import PassSkips
from lmeval_ffnskip.skip.rule import FFNRule


@dataclass(frozen=True)
class Every:
    every: int = 2  # skip one non-cold FFN in this many

    def __post_init__(self):
        if self.every < 2:
            raise ValueError(f"every={self.every} is out of range: it must be >= 2")


class EveryOther(FFNRule):
    Options = Every

    @classmethod
    def limit(cls, layout):
        return len(layout.mid) // 2

    @property
    def skippable(self):
        return self.layout.mid[self.options.every - 1 :: self.options.every]

    def begin(self, eligible, positions):
        skips = PassSkips(eligible, self.layout.n_layers)
        for layer in self.skippable:
            skips.skip(layer, skips.rows)
        return skips


class Unfinished(FFNRule):
    pass


NOT_A_RULE = 42
"""


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The name of an importable module, outside the package, holding ``EVERY_OTHER``."""
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "every_other_rule.py").write_text(textwrap.dedent(EVERY_OTHER))
    sys.path.insert(0, str(folder))
    yield "every_other_rule"
    sys.path.remove(str(folder))
    sys.modules.pop("every_other_rule", None)


def _below(level: float) -> float:
    """The largest float below ``level``."""
    return math.nextafter(level, -math.inf)


def _pass(policy: SkipPolicy, positions: list[int]):
    """The record a rule begins for one pass of eligible rows at ``positions``."""
    rule = policy.rule(policy, policy.layout(N_LAYERS))
    return rule, rule.begin([True] * len(positions), positions)


def _skipped(record, row: int) -> list[int]:
    return record.mask()[row].nonzero().squeeze(1).tolist()


# -- ffnskip ------------------------------------------------------------------------------------


def test_ffnskip_fires_at_exactly_the_threshold_and_not_just_below():
    policy = SkipPolicy(threshold=0.9, cold_start=2, cold_end=2, target_skip=0.25)  # k = 3
    rule, record = _pass(policy, [5, 6])
    assert rule.checked == range(2, 9) and record.checking == [0, 1] and record.checks_at(2)
    record.measured(2, [0, 1], [0.9, _below(0.9)])
    assert _skipped(record, 0) == [3, 4, 5] and _skipped(record, 1) == []
    assert record.checking == [1] and record.never_rows() == [1]  # row 1 looks on
    record.measured(3, [1], [1.0])
    assert _skipped(record, 1) == [4, 5, 6] and record.never_fired() == 0 and not record.checking


def test_ffnskip_block_stops_at_the_last_non_cold_layer():
    policy = SkipPolicy(threshold=0.5, cold_start=2, cold_end=2, target_skip=0.25)  # mid 2..9, k = 3
    rule, record = _pass(policy, [7])
    assert rule.skippable == range(3, 10)
    assert record.checks_at(8) and not record.checks_at(9)  # the last non-cold layer is never checked
    record.measured(8, [0], [0.5])
    assert _skipped(record, 0) == [9]  # the block would reach 11; layers 10, 11 are cold
    rule, record = _pass(policy, [7])
    record.measured(6, [0], [0.5])
    assert _skipped(record, 0) == [7, 8, 9]


def test_ffnskip_threshold_switches():
    fire, check, off = (
        SkipPolicy(threshold=t, cold_start=2, cold_end=2) for t in (ALWAYS, CHECKS_ONLY, NEVER)
    )
    _, record = _pass(fire, [3])
    record.measured(2, [0], [-1.0])  # the lowest cosine fires
    assert _skipped(record, 0) == [3, 4, 5]
    _, record = _pass(check, [3])
    record.measured(2, [0], [_below(1.0)])
    assert record.checks_at(2) and _skipped(record, 0) == []
    _, record = _pass(off, [3])
    assert record.idle() and not record.checks_at(2) and record.never_fired() == 1
    assert (ALWAYS, CHECKS_ONLY, NEVER) == (-1.0, 1.0, 2.0)


# -- spread ---------------------------------------------------------------------------------------


def _spread(mean: float) -> SkipPolicy:
    calibration = ((mean, 0.01),) * N_LAYERS
    return SkipPolicy(method="spread", cold_start=2, cold_end=1, target_skip=0.25, calibration=calibration)


def test_spread_skips_after_a_layer_exactly_at_its_level_and_not_just_below():
    policy = _spread(0.8)  # groups [2, 3, 4], [5, 6, 7], [8, 9, 10]; level 0.8 everywhere
    position = next(p for p in range(100) if position_hash(policy.seed, p) % 9 == 0)  # the uncut groups
    for cos, expected in ((0.8, [2, 5, 8]), (_below(0.8), [4, 7, 10])):
        rule, record = _pass(policy, [position])
        assert rule.checked == range(1, 10) and rule.skippable == range(2, 11)
        for layer in range(N_LAYERS):
            record.enter(layer)
            if record.checks_at(layer):
                record.measured(layer, record.checking, [cos])
        assert _skipped(record, 0) == expected  # at or above: the group's first; below: its last
        assert record.never_fired() == (0 if expected[0] == 2 else 1)


def test_spread_skips_reach_the_last_non_cold_layer_and_no_further():
    policy = _spread(5.0)  # no level is reached: every group skips its last layer
    for position in range(40):
        _, record = _pass(policy, [position])
        for layer in range(N_LAYERS):
            record.enter(layer)
        assert len(_skipped(record, 0)) == 3 and 10 in _skipped(record, 0) and record.skip_count[11] == 0


# -- every FFN rule -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ffnskip", "spread", "random", "static"])
@torch.no_grad()
def test_the_first_eligible_step_is_the_one_warmup_steps_after_the_prompt(method):
    model = tiny_model("llama", n_layers=N_LAYERS)
    policy = SkipPolicy(
        method=method, warmup=3, threshold=ALWAYS, calibration=((-5.0, 0.1),) * N_LAYERS, cold_start=2
    )
    with attach(model, policy, record=True) as engine:
        model.generate(token_ids(2, 5), max_new_tokens=6, min_new_tokens=6, do_sample=False)
    skipped = [int(step.sum()) for step in engine.history]  # the prompt pass, then 5 decoding steps
    k = engine.layout.k
    assert skipped == [0, 0, 0, 0, 2 * k, 2 * k]  # steps 0, 1, 2 warm up; step 3 skips
    assert engine.stats.eligible == 2 * 2


def test_static_and_random_draw_among_their_layers_only():
    for method, layers in (("static", range(2, 10)), ("random", range(N_LAYERS))):
        policy = SkipPolicy(method=method, cold_start=2, cold_end=2, target_skip=0.5)
        rule, record = _pass(policy, list(range(300)))
        drawn = record.mask().any(0).nonzero().squeeze(1).tolist()
        assert rule.skippable == layers and drawn == list(layers)
        assert all(len(_skipped(record, row)) == 6 for row in range(300))
    with pytest.raises(ValueError, match="method=static can skip at most 8"):
        SkipPolicy(method="static", cold_start=2, cold_end=2, target_skip=0.75).layout(N_LAYERS)


def test_dense_is_eligible_nowhere_and_touches_no_layer():
    policy = SkipPolicy(method="dense", warmup=0)
    rule = policy.rule(policy, policy.layout(N_LAYERS))
    assert rule.layout.k == 0 and rule.checked == rule.skippable == range(0)
    assert rule.eligible([0, 1, 2], [True] * 3) == [False] * 3


def test_which_rules_decide_from_the_weights():
    depends = {m: SkipPolicy(method=m).rule.depends_on_weights(SkipPolicy(method=m)) for m in rules.BUILTINS}
    assert {m for m, yes in depends.items() if yes} == {"ffnskip", "spread", "shortgpt"}
    assert not SkipPolicy().rule.depends_on_weights(SkipPolicy(threshold=ALWAYS))  # fires at once
    assert not SkipPolicy().rule.depends_on_weights(SkipPolicy(threshold=NEVER))


# -- the registry ---------------------------------------------------------------------------------


def test_the_registry_finds_every_built_in():
    assert lmeval_ffnskip.METHODS == tuple(rules.BUILTINS) == rules.methods()
    for name, builtin in rules.BUILTINS.items():
        found = rules.rule_class(name)
        assert issubclass(found, LayerRule if builtin.skips_layers else FFNRule), name
        assert found.skips_layers == builtin.skips_layers
    assert lmeval_ffnskip.LAYER_METHODS == ("shortgpt", "skipdecode")
    assert rules.rule_class("spread").needs == {"levels"}
    assert rules.rule_class("shortgpt").needs == {"influence"}


def test_an_external_rule_runs_through_attach_with_its_own_settings(plugin):
    method = f"{plugin}:EveryOther"
    model = tiny_model("llama", n_layers=8)  # cold 1 + 1: non-cold 1..6, every other: 2, 4, 6
    for args, skipped in (({}, [2, 4, 6]), ({"every": "3"}, [3, 6])):
        policy = SkipPolicy.from_args({"method": method, "warmup": "1", **args})
        with attach(model, policy, record=True) as engine:
            model.generate(token_ids(1, 5), max_new_tokens=5, min_new_tokens=5, do_sample=False)
        summary = engine.stats.summary()
        assert engine.stats.eligible == 3  # 4 decoding steps, the first warms up
        assert summary["skip_ratio_eligible"] == len(skipped) / 8
        assert engine.history[-1][0, -1].nonzero().squeeze(1).tolist() == skipped
    assert "every" in setting_names(method)
    with pytest.raises(ValueError, match=r"^every=1 is out of range: it must be >= 2$"):
        SkipPolicy.from_args({"method": method, "every": 1})
    with pytest.raises(ValueError, match=r"^every='often' is not a valid int$"):
        SkipPolicy.from_args({"method": method, "every": "often"})
    with pytest.raises(
        ValueError, match=rf"^unknown settings for method={method}: evry; valid: method, .*every$"
    ):
        SkipPolicy.from_args({"method": method, "evry": 3})
    with pytest.raises(ValueError, match="do not fit method=dense: it takes none"):
        SkipPolicy(method="dense", options=policy.options)


def test_an_entry_point_names_a_rule(plugin, monkeypatch):
    point = EntryPoint(name="every-other", value=f"{plugin}:EveryOther", group=rules.ENTRY_POINTS)
    broken = EntryPoint(name="broken", value="no_such_module_here:Rule", group=rules.ENTRY_POINTS)
    installed = {rules.ENTRY_POINTS: [point, broken]}
    monkeypatch.setattr(rules, "entry_points", lambda group: installed.get(group, []))
    assert rules.methods() == (*rules.BUILTINS, "broken", "every-other")
    assert SkipPolicy(method="every-other").rule.__name__ == "EveryOther"
    with pytest.raises(ValueError, match=r"^method='broken': entry point .* does not load: ModuleNotFound"):
        SkipPolicy(method="broken")


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("fast", "method='fast' is unknown; choose one of ffnskip, spread, dense, random, static, shortgpt"),
        ("no_such_module_here:Rule", "module 'no_such_module_here' does not import: ModuleNotFoundError"),
        ("{plugin}:Missing", "module '{plugin}' has no 'Missing'"),
        ("{plugin}:NOT_A_RULE", "is 42, not a skip rule: a subclass of lmeval_ffnskip.skip.rule.FFNRule"),
        ("{plugin}:Unfinished", "Unfinished does not implement begin, limit, skippable"),
    ],
)
def test_a_name_that_is_not_a_rule_fails_in_one_line(plugin, method, message):
    method, message = method.format(plugin=plugin), message.format(plugin=plugin)
    with pytest.raises(ValueError) as err:
        SkipPolicy.from_args({"method": method})
    assert message in str(err.value) and "\n" not in str(err.value)


# -- settings and names ---------------------------------------------------------------------------


def test_from_args_refuses_what_it_cannot_set():
    with pytest.raises(ValueError, match=r"^calibration cannot be set from model_args"):
        SkipPolicy.from_args({"calibration": "0.9"})
    with pytest.raises(
        ValueError, match=r"^unknown settings for method=ffnskip: thresold; valid: method, threshold"
    ):
        SkipPolicy.from_args({"thresold": "0.9"})
    with pytest.raises(ValueError, match=r"^warmup='none' is not a valid int$"):
        SkipPolicy.from_args({"warmup": "none"})  # None only where the field allows it
    assert "calibration" not in setting_names("ffnskip") and "horizon" in setting_names("ffnskip")


def test_config_names_and_their_method():
    assert config_name("ffnskip", 0.25) == "ffnskip-0.25" and config_name("static", 0.5) == "static-0.5"
    for name, method in [
        ("ffnskip-0.25", "ffnskip"),
        ("ffnskip-1e-05", "ffnskip"),
        ("every-other-0.5-warmup4", "every-other"),
        ("pkg.mod:Rule-0.25", "pkg.mod:Rule"),
        ("dense", "dense"),
        ("skip-all", "skip-all"),
    ]:
        assert method_of(name) == method, name
