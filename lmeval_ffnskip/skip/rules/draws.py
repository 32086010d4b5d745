"""The random baselines' draws (``random``, ``static``): k FFNs per token among a range of
layers, depending on ``seed`` and the token's position only, so a sequence gets the same draw at
any batch size."""

from __future__ import annotations

import torch

from ..layout import LayerLayout
from ..policy import PolicyFields
from ..rows import PassSkips
from ..rule import DeviceForm, FFNRule


class RandomDraws:
    """Per-position random FFN choices, from a seeded table grown on demand."""

    def __init__(self, seed: int, k: int, allowed: range, n_layers: int) -> None:
        self.k = k
        self.allowed = torch.zeros(n_layers, dtype=torch.bool)
        self.allowed[allowed.start : allowed.stop] = True
        self.generator = torch.Generator().manual_seed(seed)
        self.table: list[list[int]] = []  # position -> the layers it skips

    def take(self, position: int) -> list[int]:
        """The layers skipped at absolute ``position``."""
        if position >= len(self.table):
            rows = max(position + 1, 2 * len(self.table), 256) - len(self.table)
            scores = torch.rand(rows, len(self.allowed), generator=self.generator)
            scores[:, ~self.allowed] = 2.0
            self.table += scores.topk(self.k, dim=1, largest=False).indices.sort(dim=1).values.tolist()
        return self.table[position]


class DrawnSkips(FFNRule):
    """A rule that skips the k FFNs drawn for each eligible token among ``skippable``, decided
    up front; the limit is the size of that range."""

    def __init__(self, policy: PolicyFields, layout: LayerLayout) -> None:
        super().__init__(policy, layout)
        self.draws = RandomDraws(policy.seed, layout.k, self.skippable, layout.n_layers)

    @classmethod
    def depends_on_weights(cls, policy: PolicyFields) -> bool:
        return False

    def begin(self, eligible: list[bool], positions: list[int]) -> PassSkips:
        skips = PassSkips(eligible, self.layout.n_layers)
        if self.layout.k:
            for row in skips.rows:
                for layer in self.draws.take(positions[row]):
                    skips.skip(layer, [row])
        return skips

    def device(self) -> DeviceForm:
        return DeviceForm(self)  # decided up front: the host's mask goes in
