"""``method=static``, the paper's Baseline 2: k FFNs skipped at random among the non-cold layers."""

from __future__ import annotations

from ..layout import LayerLayout
from .draws import DrawnSkips


class StaticSkip(DrawnSkips):
    @classmethod
    def limit(cls, layout: LayerLayout) -> int:
        return len(layout.mid)

    @property
    def skippable(self) -> range:
        return self.layout.mid
