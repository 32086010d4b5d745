"""A skip rule that lives outside lmeval_ffnskip (docs/extending.md): once a token is eligible,
skip the FFN of every other non-cold layer, the first k of them (k = round(target_skip x layers))."""

from __future__ import annotations

from lmeval_ffnskip.skip.layout import LayerLayout
from lmeval_ffnskip.skip.rows import PassSkips
from lmeval_ffnskip.skip.rule import FFNRule
from lmeval_ffnskip.skip.settings import SkipPolicy


def every_other(layout: LayerLayout) -> range:
    """The second, fourth, ... non-cold layers."""
    return range(layout.mid.start + 1, layout.mid.stop, 2)


class EveryOther(FFNRule):
    @classmethod
    def depends_on_weights(cls, policy: SkipPolicy) -> bool:
        return False  # the layers follow from the depth alone

    @classmethod
    def limit(cls, layout: LayerLayout) -> int:
        return len(every_other(layout))

    @property
    def skippable(self) -> range:
        return every_other(self.layout)[: self.layout.k]

    def begin(self, eligible: list[bool], positions: list[int]) -> PassSkips:
        skips = PassSkips(eligible, self.layout.n_layers)  # skips.rows: the eligible rows
        for layer in self.skippable:
            skips.skip(layer, skips.rows)
        return skips
