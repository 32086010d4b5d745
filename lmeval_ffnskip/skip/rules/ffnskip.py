"""``method=ffnskip``, the paper's Algorithm 1.

The first ``cold_start`` and last ``cold_end`` layers always run their FFN. In the layers between
(non-cold), the FFN runs and the cosine similarity of the residual stream before and after it,
cos(h, h + FFN(h)), is measured; once it reaches ``threshold`` the FFNs of the next k non-cold
layers are skipped (fewer where the non-cold range ends first), which spends the token's budget.
A token's similarity is measured until it fires, so the last non-cold layer is never checked.
"""

from __future__ import annotations

from ..device import DeviceForm
from ..layout import LayerLayout
from ..rows import PassSkips
from ..rule import FFNRule
from ..settings import ALWAYS, CHECKS_ONLY, SkipPolicy


class FFNSkip(FFNRule):
    needs = frozenset({"profile"})
    threshold_trigger = True

    @classmethod
    def depends_on_weights(cls, policy: SkipPolicy) -> bool:
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
        from .trigger_device import TriggerOnDevice

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
