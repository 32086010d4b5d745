"""``method=dense``: nothing is skipped and no token is eligible; the engine hooks no layer."""

from __future__ import annotations

import dataclasses

from ..layout import LayerLayout
from ..policy import PolicyFields
from ..rows import PassSkips
from ..rule import DeviceForm, FFNRule


class Dense(FFNRule):
    reference = True

    @classmethod
    def depends_on_weights(cls, policy: PolicyFields) -> bool:
        return False

    @classmethod
    def resolve(cls, policy: PolicyFields, layout: LayerLayout) -> LayerLayout:
        return dataclasses.replace(layout, k=0)

    @classmethod
    def limit(cls, layout: LayerLayout) -> int:
        return 0

    @property
    def skippable(self) -> range:
        return range(0)

    def eligible(self, since: list[int], real: list[bool]) -> list[bool]:
        return [False] * len(real)

    def begin(self, eligible: list[bool], positions: list[int]) -> PassSkips:
        return PassSkips(eligible, self.layout.n_layers)

    def device(self) -> DeviceForm:
        return DeviceForm(self)
