"""``ffnskip``'s device form: Algorithm 1's trigger kept per row on the device.

Per row, ``fired`` (its similarity reached the threshold at some checked layer this step) and
``until`` (the first layer it runs again: min(trigger + 1 + k, end of the non-cold layers)), as
``TriggerPass`` keeps them on the host; a row checks while eligible and not fired.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..device import DeviceForm, State
from ..settings import CHECKS_ONLY

if TYPE_CHECKING:
    from .ffnskip import FFNSkip


class TriggerOnDevice(DeviceForm):
    def __init__(self, rule: FFNSkip) -> None:
        super().__init__(rule)
        layout = rule.layout
        self.threshold, self.k, self.stop = rule.policy.threshold, layout.k, layout.mid.stop
        self.searching = layout.k > 0 and self.threshold <= CHECKS_ONLY
        self.checked = frozenset(rule.checked)

    def inputs(self, eligible: list[bool], positions: list[int]) -> dict[str, torch.Tensor]:
        return {}

    def start(self, eligible: torch.Tensor, inputs: dict[str, torch.Tensor]) -> State:
        return {
            "eligible": eligible,
            "fired": torch.zeros_like(eligible),
            "until": torch.zeros(eligible.shape, dtype=torch.long, device=eligible.device),
        }

    def enter(self, layer: int, state: State) -> tuple[torch.Tensor, State]:
        return state["fired"] & (state["until"] > layer), state

    def checks_at(self, layer: int) -> bool:
        return self.searching and layer in self.checked

    def measured(self, layer: int, state: State, cosines: torch.Tensor) -> State:
        fire = state["eligible"] & ~state["fired"] & (cosines >= self.threshold)
        until = torch.where(fire, min(layer + 1 + self.k, self.stop), state["until"])
        return {**state, "fired": state["fired"] | fire, "until": until}

    def never(self, state: State) -> torch.Tensor:
        return state["eligible"] & ~state["fired"]
