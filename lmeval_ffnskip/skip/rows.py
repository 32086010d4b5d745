"""Which rows of one forward pass skip which layers' FFNs: the record that both per-pass rules
(``policy.TokenRule``, ``spread.SpreadRule``) fill and the engine reads. Plain lists, built
every decoding pass; the mask tensor only when asked for."""

from __future__ import annotations

import torch


class PassSkips:
    """The N tokens (rows) of one pass: which are eligible, and per layer which rows skip it."""

    def __init__(self, eligible: list[bool], n_layers: int) -> None:
        self.n, self.n_layers = len(eligible), n_layers
        self.rows = [row for row, ok in enumerate(eligible) if ok]  # the eligible rows, ascending
        self.n_eligible = len(self.rows)
        self.skip_count = [0] * n_layers
        self._skipping: dict[int, list[int]] = {}  # layer -> rows that skip it

    def _skip(self, layer: int, rows: list[int]) -> None:
        self._skipping.setdefault(layer, []).extend(rows)
        self.skip_count[layer] += len(rows)

    def kept(self, layer: int) -> torch.Tensor:
        """Indices of the rows that run ``layer``'s FFN, ascending."""
        skipped = set(self._skipping.get(layer, ()))
        return torch.tensor([row for row in range(self.n) if row not in skipped], dtype=torch.long)

    def mask(self) -> torch.Tensor:
        """[N, n_layers] which FFNs each row skipped."""
        skip = torch.zeros(self.n, self.n_layers, dtype=torch.bool)
        for layer, rows in self._skipping.items():
            skip[rows, layer] = True
        return skip
