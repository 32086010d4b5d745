"""Which rows of one forward pass skip which layers' FFNs: the record an FFN rule returns from
``begin`` (``rule.py``) and fills as it decides, and the engine reads. Plain lists, built every
decoding pass; the mask tensor only when asked for."""

from __future__ import annotations

import torch

from .stats import RowCount


class PassSkips:
    """The N tokens (rows) of one pass: which are eligible, and per layer which rows skip it.

    As it stands, a record of decisions made up front (``skip`` each before returning it from
    ``begin``). A rule that decides layer by layer subclasses it and overrides ``enter``,
    ``checks_at`` / ``measured`` (with the rows to measure in ``checking``) and ``never_rows``.
    """

    def __init__(self, eligible: list[bool], n_layers: int) -> None:
        self.n, self.n_layers = len(eligible), n_layers
        self.rows = [row for row, ok in enumerate(eligible) if ok]  # the eligible rows, ascending
        self.n_eligible = len(self.rows)
        self.skip_count = [0] * n_layers
        # rows whose similarity to measure, ascending; replaced, never changed in place (the
        # engine hands back the list it measured)
        self.checking: list[int] = []
        self._skipping: dict[int, list[int]] = {}  # layer -> rows that skip it

    def skip(self, layer: int, rows: list[int]) -> None:
        """Record that ``rows`` skip ``layer``'s FFN (a layer the engine has not reached yet)."""
        self._skipping.setdefault(layer, []).extend(rows)
        self.skip_count[layer] += len(rows)

    def idle(self) -> bool:
        """Whether this pass has nothing to decide: no row skips and none is to be measured."""
        return not self.checking and not self._skipping

    def enter(self, layer: int) -> None:
        """Called before ``layer``'s FFN runs."""

    def checks_at(self, layer: int) -> bool:
        """Whether to measure the similarity of the rows in ``checking`` after ``layer``'s FFN."""
        return False

    def measured(self, layer: int, rows: list[int], cosines: list[float]) -> None:
        """cos(h, h + FFN(h)) of ``rows`` at ``layer`` (asked for by ``checks_at``)."""

    def never_rows(self) -> list[int]:
        """The eligible rows whose rule never fired (none for a rule without a trigger)."""
        return []

    def never_fired(self) -> int:
        """How many eligible rows' rule never fired."""
        return len(self.never_rows())

    def kept(self, layer: int) -> torch.Tensor:
        """Indices of the rows that run ``layer``'s FFN, ascending."""
        skipped = set(self._skipping.get(layer, ()))
        return torch.tensor([row for row in range(self.n) if row not in skipped], dtype=torch.long)

    def row_counts(self, length: int, real: list[bool]) -> list[RowCount]:
        """Per batch entry (``length`` consecutive rows each), what it counted in this pass."""
        layers: list[list[int]] = [[] for _ in range(self.n)]
        for layer, rows in self._skipping.items():
            for row in rows:
                layers[row].append(layer)
        eligible, never = set(self.rows), set(self.never_rows())
        out = []
        for start in range(0, self.n, length):
            span = range(start, start + length)
            out.append(
                RowCount(
                    tokens=sum(real[i] for i in span),
                    eligible=sum(i in eligible for i in span),
                    never_fired=sum(i in never for i in span),
                    layers=tuple(layer for i in span for layer in layers[i]),
                )
            )
        return out

    def mask(self) -> torch.Tensor:
        """[N, n_layers] which FFNs each row skipped."""
        skip = torch.zeros(self.n, self.n_layers, dtype=torch.bool)
        for layer, rows in self._skipping.items():
            skip[rows, layer] = True
        return skip


class SettledPass(PassSkips):
    """The record of a pass decided elsewhere (a compiled step, on the device): ``mask`` [N,
    n_layers] which rows skipped which FFNs, ``never`` [N] the eligible rows whose rule never
    fired."""

    def __init__(self, eligible: list[bool], mask: torch.Tensor, never: torch.Tensor) -> None:
        super().__init__(eligible, mask.shape[1])
        for layer, rows in enumerate(mask.T.tolist()):
            skipping = [row for row, skips in enumerate(rows) if skips]
            if skipping:
                self.skip(layer, skipping)
        self._never = never.nonzero().flatten().tolist()

    def never_rows(self) -> list[int]:
        return self._never
