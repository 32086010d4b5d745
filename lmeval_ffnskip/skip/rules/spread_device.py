"""``spread``'s device form: each row's groups, the one it still owes, and its last similarity,
kept on the device as ``SpreadPass`` keeps them on the host.

Per step the host picks each eligible row's cut (from its position, as ``SpreadPass``) and passes
that cut's plan: per layer its group (-1: none) and whether it is the group's last. Per row the
state holds ``owing`` [batch, n_groups], ``high`` (the previous layer's similarity reached that
layer's calibrated level) and ``fired`` (a skip chosen by similarity, not by a group's end).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..device import DeviceForm, State
from .spread import _position_hash, _spread_tables

if TYPE_CHECKING:
    from .spread import Spread


class SpreadOnDevice(DeviceForm):
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
        cuts = torch.tensor([_position_hash(self.seed, p) % len(self.group) for p in positions])
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
