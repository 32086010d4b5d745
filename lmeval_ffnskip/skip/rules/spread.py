"""``method=spread`` (ours): the paper's adaptive trigger made to work on small models.

The paper's rule packs a token's k skips right after its trigger; on small models every middle
layer's similarity is high, so that degenerates into one contiguous block, which costs the most
(docs/method.md, "method=spread"). ``spread`` instead, per eligible token:

1. cuts the non-cold layers into k groups (``groups``) and skips exactly one FFN
   per group, so the skips are spread over the depth;
2. rotates the contiguous groups along the layers by an offset drawn from the token's position
   and ``seed`` (the last group wraps round), so tokens skip different layers: a cut shared by
   every token puts its fallbacks on the same layers and amounts to pruning them;
3. inside a group skips the FFN right after one whose similarity reached *that layer's own*
   calibrated level (mean + ``SPREAD_Z`` std over calibration text), else the group's last FFN;
4. never skips "hot" layers, whose calibrated mean lies far below the typical layer's.

It needs ``SkipPolicy.calibration`` (per-layer mean and std, from ``ffnskip calibrate``).
Its similarity checks start at the layer before the first non-cold one (which it can skip).
Decisions use only the token's own earlier layers and its position, so a teacher-forced pass
decides what token-by-token decoding decides, and batch rows decide alone. ``SpreadPass``
decides on the host (the eager engine), ``SpreadOnDevice`` inside a compiled step;
``tests/test_device_forms.py`` holds them equal.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
from dataclasses import dataclass

import torch

from ..layout import LayerLayout
from ..policy import PolicyFields
from ..rows import PassSkips
from ..rule import DeviceForm, FFNRule, State

SPREAD_Z = 0.0  # a layer's similarity is high from its calibrated mean + SPREAD_Z std
_MASK64 = (1 << 64) - 1


def hot_layers(mean: list[float], std: list[float]) -> list[int]:
    """Layers whose mean similarity lies more than two typical spreads below the typical
    layer's (medians over layers): their FFN changes the residual most."""
    level = statistics.median(mean) - 2 * statistics.median(std)
    return [i for i, m in enumerate(mean) if m < level]


def groups(layout: LayerLayout) -> list[list[int]]:
    """The non-cold, non-hot layers cut into k contiguous groups of near-equal size."""
    layers = [i for i in layout.mid if i not in layout.hot]
    n, k = len(layers), layout.k
    return [layers[(g * n) // k : ((g + 1) * n) // k] for g in range(k)]


class Spread(FFNRule):
    needs = frozenset({"levels"})

    @classmethod
    def resolve(cls, policy: PolicyFields, layout: LayerLayout) -> LayerLayout:
        """The hot layers of this model's calibration (``hot_layers``) among the non-cold ones."""
        if policy.calibration is None or len(policy.calibration) != layout.n_layers:
            raise ValueError(
                "method=spread needs the per-layer similarity of a calibration of this model: "
                "pass profile=auto (calibrate once, cached) or profile=PATH (ffnskip calibrate)"
            )
        mean, std = zip(*policy.calibration, strict=True)
        hot = tuple(i for i in hot_layers(list(mean), list(std)) if i in layout.mid)
        return dataclasses.replace(layout, hot=hot)

    @classmethod
    def limit(cls, layout: LayerLayout) -> int:
        return len(layout.mid) - len(layout.hot)

    @property
    def checked(self) -> range:
        mid = self.layout.mid
        return range(max(mid.start - 1, 0), mid.stop - 1) if self.layout.k else range(0)

    @property
    def skippable(self) -> range:
        return self.layout.mid

    def begin(self, eligible: list[bool], positions: list[int]) -> PassSkips:
        return SpreadPass(self.policy, self.layout, eligible, positions)

    def device(self) -> DeviceForm:
        return SpreadOnDevice(self)


class SpreadPass(PassSkips):
    """``spread``'s decisions for the N tokens of one forward pass, made layer by layer.

    Each eligible row owes one skip to every group of its cut (``SpreadCut``); at a layer of a
    group it still owes, it skips when the previous layer's similarity reached that layer's
    calibrated level (``measured``), or when the layer is the group's last. Rows are handled per
    cut and decisions kept as plain lists (the mask tensor is built only when asked for), so the
    host work per layer is a few list operations per cut in use (one at batch 1).
    """

    def __init__(
        self, policy: PolicyFields, layout: LayerLayout, eligible: list[bool], positions: list[int]
    ) -> None:
        assert policy.calibration is not None  # checked by Spread.resolve
        super().__init__(eligible, layout.n_layers)
        self.level, cuts = _spread_tables(layout, policy.calibration)
        by_cut: dict[int, list[int]] = {}
        if layout.k:
            for row in self.rows:
                by_cut.setdefault(position_hash(policy.seed, positions[row]) % len(cuts), []).append(row)
        self._cuts = [_RowsOfCut(cuts[c], members) for c, members in by_cut.items()]
        self._high: set[int] = set()  # rows whose similarity at the previous layer reached its level
        self._fired: set[int] = set()  # rows with at least one similarity-chosen skip

    def idle(self) -> bool:
        """Whether this pass has nothing to decide (no budget: no row owes a skip)."""
        return not self._cuts

    def enter(self, layer: int) -> None:
        """Skip ``layer`` for the rows it falls to; choose the rows to measure after it."""
        skipping: list[int] = []
        checking: list[int] = []
        high, self._high = self._high, set()
        for cut in self._cuts:
            cut.enter(layer, high, skipping, checking)
        if len(self._cuts) > 1:
            checking.sort()  # the engine reads all N rows' similarities in row order
        self.checking = checking
        if skipping:
            if high:
                self._fired.update(high)  # a high row that owed this layer's group skipped it
            self.skip(layer, skipping)

    def checks_at(self, layer: int) -> bool:
        return bool(self.checking)

    def measured(self, layer: int, rows: list[int], cosines: list[float]) -> None:
        """cos(h, h + FFN) of ``rows`` at ``layer``: those at or above its level may skip next."""
        level = self.level[layer]
        self._high = {row for row, cos in zip(rows, cosines, strict=True) if cos >= level}

    def never_rows(self) -> list[int]:
        """Eligible rows all of whose skips fell to a group's last layer."""
        return [row for cut in self._cuts for row in cut.rows if row not in self._fired]


@dataclass(frozen=True)
class SpreadCut:
    """One way of cutting ``spread``'s layers into groups, as a plan per layer: (its group or
    -1, whether it is the group's last, the next layer's group if that layer is a choice (not
    its group's last) or -1)."""

    plan: tuple[tuple[int, bool, int], ...]
    n_groups: int


class _RowsOfCut:
    """The rows of one pass that share a cut, and the groups each still owes a skip."""

    def __init__(self, cut: SpreadCut, rows: list[int]) -> None:
        self.cut, self.rows = cut, rows
        self.owing = [set(rows) for _ in range(cut.n_groups)]

    def enter(self, layer: int, high: set[int], skipping: list[int], checking: list[int]) -> None:
        """Append the rows skipping ``layer`` and those to measure after it."""
        group, last, choice_next = self.cut.plan[layer]
        skipped: list[int] = []
        if group >= 0:
            owing = self.owing[group]
            skipped = [r for r in self.rows if r in owing and (last or r in high)]
            if skipped:
                owing.difference_update(skipped)
                skipping += skipped
        if choice_next >= 0:  # rows that skipped here have no similarity to measure
            owing = self.owing[choice_next]
            checking += [r for r in self.rows if r in owing and r not in skipped]


@functools.lru_cache(maxsize=16)
def _spread_tables(
    layout: LayerLayout, calibration: tuple[tuple[float, float], ...]
) -> tuple[tuple[float, ...], tuple[SpreadCut, ...]]:
    """``spread``'s per-layer levels and its cuts: ``groups(layout)`` rotated by each
    possible offset along the layers it skips (group members need not be contiguous once the
    last group wraps round). Worked out once per model and policy, read-only."""
    levels = tuple(mean + SPREAD_Z * std for mean, std in calibration)
    cut = groups(layout)
    layers = [layer for group in cut for layer in group]
    base = [g for g, group in enumerate(cut) for _ in group]
    cuts, n = [], layout.n_layers
    for offset in range(len(layers)):
        group_of = {layer: base[(i - offset) % len(layers)] for i, layer in enumerate(layers)}
        lasts = {g: max(layer for layer, h in group_of.items() if h == g) for g in range(len(cut))}
        where = [(group_of.get(layer, -1), lasts.get(group_of.get(layer, -1)) == layer) for layer in range(n)]
        choice = [g if g >= 0 and not last else -1 for g, last in where[1:]] + [-1]
        plan = tuple((g, last, c) for (g, last), c in zip(where, choice, strict=True))
        cuts.append(SpreadCut(plan, len(cut)))
    return levels, tuple(cuts)


def position_hash(seed: int, position: int) -> int:
    """A well-mixed 64-bit integer of (seed, position) (splitmix64): per-position draws that
    need no table and do not depend on which positions a pass holds."""
    x = (seed * 0x9E3779B97F4A7C15 + position + 1) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class SpreadOnDevice(DeviceForm):
    """``SpreadPass``'s decisions inside a compiled step: each row's groups, the one it still
    owes, and its last similarity, kept on the device. Per step the host picks each eligible
    row's cut (from its position, as ``SpreadPass``) and passes that cut's plan: per layer its
    group (-1: none) and whether it is the group's last. Per row the state holds ``owing``
    [batch, n_groups], ``high`` (the previous layer's similarity reached that layer's calibrated
    level) and ``fired`` (a skip chosen by similarity, not by a group's end)."""

    def __init__(self, rule: Spread) -> None:
        super().__init__(rule)
        policy, layout = rule.policy, rule.layout
        assert policy.calibration is not None  # checked by Spread.resolve
        self.level, cuts = _spread_tables(layout, policy.calibration)
        self.seed, self.k = policy.seed, layout.k
        self.n_groups = cuts[0].n_groups
        self.group = torch.tensor([[g for g, _, _ in cut.plan] for cut in cuts])
        self.last = torch.tensor([[last for _, last, _ in cut.plan] for cut in cuts])
        self.checked = frozenset(rule.checked)

    def inputs(self, eligible: list[bool], positions: list[int]) -> dict[str, torch.Tensor]:
        cuts = torch.tensor([position_hash(self.seed, p) % len(self.group) for p in positions])
        group = self.group[cuts].masked_fill(~torch.tensor(eligible)[:, None], -1)
        return {"group": group, "last": self.last[cuts]}

    def start(self, eligible: torch.Tensor, inputs: dict[str, torch.Tensor]) -> State:
        none = torch.zeros_like(eligible)
        owing = (eligible & (self.k > 0))[:, None].expand(-1, self.n_groups)
        return {**inputs, "eligible": eligible, "owing": owing, "high": none, "fired": none, "skipped": none}

    def enter(self, layer: int, state: State) -> tuple[torch.Tensor, State]:
        group, last, high = state["group"][:, layer], state["last"][:, layer], state["high"]
        this = torch.arange(self.n_groups, device=group.device) == group[:, None]  # [batch, n_groups]
        owes = (state["owing"] & this).any(-1)
        skip = owes & (last | high)
        return skip, {
            **state,
            "owing": state["owing"] & ~(this & skip[:, None]),
            "fired": state["fired"] | (owes & high & ~last),
            "skipped": skip,
        }

    def checks_at(self, layer: int) -> bool:
        return layer in self.checked

    def measured(self, layer: int, state: State, cosines: torch.Tensor) -> State:
        return {**state, "high": (cosines >= self.level[layer]) & ~state["skipped"]}

    def never(self, state: State) -> torch.Tensor:
        return state["eligible"] & ~state["fired"] & (self.k > 0)
