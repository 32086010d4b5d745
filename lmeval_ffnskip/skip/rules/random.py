"""``method=random``, the paper's Baseline 1: k FFNs skipped at random among all layers."""

from __future__ import annotations

from ..layout import LayerLayout
from .draws import DrawnSkips


class RandomSkip(DrawnSkips):
    @classmethod
    def limit(cls, layout: LayerLayout) -> int:
        return layout.n_layers

    @property
    def skippable(self) -> range:
        return range(self.layout.n_layers)
