"""``method=ffnskip``, the paper's Algorithm 1.

The first ``cold_start`` and last ``cold_end`` layers always run their FFN. In the layers between
(non-cold), the FFN runs and the cosine similarity of the residual stream before and after it,
cos(h, h + FFN(h)), is measured; once it reaches ``threshold`` the FFNs of the next k non-cold
layers are skipped (fewer where the non-cold range ends first), which spends the token's budget.
A token's similarity is measured until it fires, so the last non-cold layer is never checked.
``TriggerPass`` decides on the host (the eager engine), ``TriggerOnDevice`` inside a compiled
step; ``tests/test_device_forms.py`` holds them equal.
"""

from __future__ import annotations

import torch

from ..layout import LayerLayout
from ..policy import ALWAYS, CHECKS_ONLY, PolicyFields
from ..rows import PassSkips
from ..rule import DeviceForm, FFNRule, State


class FFNSkip(FFNRule):
    needs = frozenset({"profile"})
    threshold_trigger = True

    @classmethod
    def depends_on_weights(cls, policy: PolicyFields) -> bool:
        return ALWAYS < policy.threshold <= CHECKS_ONLY  # else it fires at once, or never

    @classmethod
    def limit(cls, layout: LayerLayout) -> int:
        return len(layout.mid) - 1  # the earliest trigger is the first non-cold layer

    @property
    def checked(self) -> range:
        mid = self.layout.mid
        return range(mid.start, mid.stop - 1)

    @property
    def skippable(self) -> range:
        mid = self.layout.mid
        return range(mid.start + 1, mid.stop)

    def begin(self, eligible: list[bool], positions: list[int]) -> PassSkips:
        return TriggerPass(self, eligible)

    def device(self) -> DeviceForm:
        return TriggerOnDevice(self)


class TriggerPass(PassSkips):
    """One pass of ``ffnskip``: ``checking`` holds the rows still looking for their trigger."""

    def __init__(self, rule: FFNSkip, eligible: list[bool]) -> None:
        layout = rule.layout
        super().__init__(eligible, layout.n_layers)
        self.threshold, self.k, self.stop = rule.policy.threshold, layout.k, layout.mid.stop
        searching = layout.k > 0 and self.threshold <= CHECKS_ONLY
        self.checking = self.rows if searching else []
        self._never = [] if searching else self.rows  # rows that cannot fire: no budget, or NEVER
        self._checked = rule.checked

    def checks_at(self, layer: int) -> bool:
        return bool(self.checking) and layer in self._checked

    def measured(self, layer: int, rows: list[int], cosines: list[float]) -> None:
        """Rows whose similarity reached the threshold skip the next k FFNs."""
        fired = [row for row, cos in zip(rows, cosines, strict=True) if cos >= self.threshold]
        if not fired:
            return
        done = set(fired)
        self.checking = [row for row in self.checking if row not in done]
        for j in range(layer + 1, min(layer + 1 + self.k, self.stop)):
            self.skip(j, fired)

    def never_rows(self) -> list[int]:
        return self._never + self.checking


class TriggerOnDevice(DeviceForm):
    """``TriggerPass``'s decisions inside a compiled step: per row, ``fired`` (its similarity
    reached the threshold at some checked layer this step) and ``until`` (the first layer it runs
    again: min(trigger + 1 + k, end of the non-cold layers)); a row checks while eligible and not
    fired."""

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
