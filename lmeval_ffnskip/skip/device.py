"""A rule's device form: its per-token decisions made inside one compiled decoding step
(``compiled.py``), as tensor operations, so that the step has no host read.

``FFNRule.device()`` returns one (or None: the compiled path then refuses the method by name).
Per step the decoder calls, on the host, ``inputs(eligible, positions)`` (plain lists, as the
eager rule gets them), then inside the traced step ``start``, and per patched layer, in order,
``enter`` (before its FFN block, where the layer is skippable) and, where ``checks_at``,
``measured`` (after it), and at the end ``never``. Every tensor is [batch] (one decoding token
per row) unless said otherwise; ``state`` is a dict of tensors that the form replaces, never
changes in place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .rule import FFNRule

State = dict[str, torch.Tensor]


class DeviceForm:
    """The default form: decisions made up front on the host, like ``PassSkips``'s base record
    (dense, static, random): ``begin`` runs on the host and its mask goes in as a tensor."""

    def __init__(self, rule: FFNRule) -> None:
        self.rule = rule
        self.layers = tuple(sorted(set(rule.checked) | set(rule.skippable)))  # the patched layers
        self.skippable = frozenset(rule.skippable)

    def inputs(self, eligible: list[bool], positions: list[int]) -> dict[str, torch.Tensor]:
        """Host tensors for one step: here the record's [batch, n_layers] mask and never-fired rows."""
        never = torch.zeros(len(eligible), dtype=torch.bool)
        if not any(eligible):
            return {
                "mask": torch.zeros(len(eligible), self.rule.layout.n_layers, dtype=torch.bool),
                "never": never,
            }
        record = self.rule.begin(eligible, positions)
        never[record.never_rows()] = True
        return {"mask": record.mask(), "never": never}

    def start(self, eligible: torch.Tensor, inputs: dict[str, torch.Tensor]) -> State:
        """The state at the first layer of a step."""
        return dict(inputs, eligible=eligible)

    def enter(self, layer: int, state: State) -> tuple[torch.Tensor, State]:
        """Which rows skip ``layer``'s FFN block (a layer in ``skippable``), and the state after."""
        return state["mask"][:, layer], state

    def checks_at(self, layer: int) -> bool:
        """Whether ``measured`` is called after ``layer``'s block (fixed per form: the graph's shape)."""
        return False

    def measured(self, layer: int, state: State, cosines: torch.Tensor) -> State:
        """The state after cos(h, h + block) at ``layer`` (float64, every row; rows that skipped
        the block have 1 there and must be ignored)."""
        return state

    def never(self, state: State) -> torch.Tensor:
        """Eligible rows whose rule never fired in this step."""
        return state["never"]
