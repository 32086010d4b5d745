"""Planned compiled steps: a decoding step traced for one set of decisions, checked on the host.

A per-layer branch inside a compiled step (``compiled.py``'s ``torch.cond``) costs about what a
small FFN block does, and it splits the graph where a GPU would capture it whole. A rule's
decisions often repeat from token to token (``ffnskip`` on SmolLM2 fires at its first check for
nearly every token), so a step can instead be traced for one ``Plan``: the blocks every row
skips are not in the graph, those some rows skip are computed and zeroed for those rows, and the
similarities at the layers the rule reads are returned. No branch is left in the step.

Whether a planned step computed what the eager engine would have is found on the host, by
``replay``: the rule's record (``rule.begin``, then per hooked layer ``enter``, ``checks_at``,
``measured``, in the eager engine's order) driven with the similarities the step returned. Where
the replayed decisions equal the plan's, every similarity the rule read was taken on the path the
eager engine takes, so the step is exact; else it is discarded and the token decoded again by the
general step, which decides inside (``PlanBook.discarded`` counts those).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .rows import PassSkips
from .rule import FFNRule

MAX_PLANS = 8  # compiled plans per decoder


@dataclass(frozen=True)
class Plan:
    """One step's decisions as a compiled step is traced with them: the rows skipping each
    layer's FFN block (layers ascending, rows ascending), of ``n`` rows, and the layers whose
    similarities the step returns."""

    n: int
    skips: tuple[tuple[int, tuple[int, ...]], ...] = ()
    measured: tuple[int, ...] = ()

    @classmethod
    def of(cls, record: PassSkips, measured: tuple[int, ...]) -> Plan:
        return cls(record.n, record.skips(), measured)

    @property
    def gone(self) -> frozenset[int]:
        """Layers every row skips: their FFN block is not in the step."""
        return frozenset(layer for layer, rows in self.skips if len(rows) == self.n)

    @property
    def masked(self) -> frozenset[int]:
        """Layers some rows skip: computed for every row, those rows' outputs zeroed."""
        return frozenset(layer for layer, rows in self.skips if len(rows) < self.n)

    def rows(self, n_layers: int) -> torch.Tensor:
        """[n, n_layers] which rows skip which blocks (the masked layers read it)."""
        mask = torch.zeros(self.n, n_layers, dtype=torch.bool)
        for layer, rows in self.skips:
            mask[list(rows), layer] = True
        return mask


def replay(
    rule: FFNRule,
    layers: tuple[int, ...],
    eligible: list[bool],
    positions: list[int],
    cosines: Mapping[int, list[float]],
) -> tuple[PassSkips, tuple[int, ...]] | None:
    """The rule's record of one pass, driven through the hooked ``layers`` as the eager engine
    drives it with the similarities ``cosines`` (layer -> one per row), and the layers it read;
    None where it asked for a similarity not given."""
    record = rule.begin(eligible, positions)
    if record.idle():
        return record, ()
    read: list[int] = []
    for layer in layers:
        record.enter(layer)
        if record.checks_at(layer):
            given = cosines.get(layer)
            if given is None:
                return None
            rows = record.checking
            record.measured(layer, rows, [given[row] for row in rows])
            read.append(layer)
    return record, tuple(read)


class PlanBook:
    """A decoder's plans: the compiled steps of those decided at two consecutive steps of one
    batch shape (decisions that repeat, unlike a per-position draw; a plan without skips or
    reads at once, and a shape's first guess), at most ``MAX_PLANS``, and per shape the last
    plan that held, the next step's guess."""

    def __init__(self, compile_step: Callable[[], Callable[..., object]]) -> None:
        self._compile_step = compile_step
        self._last: dict[object, Plan] = {}  # per shape, the plan decided at its last step
        self.steps: dict[Plan, Callable[..., object]] = {}
        self._guess: dict[object, Plan] = {}
        self._opened: set[object] = set()  # shapes whose first guess was made
        self._untried: set[Plan] = set()  # first guesses compiled that have not held yet
        self._spare: dict[Plan, Callable[..., object]] = {}  # first guesses given up, kept for reuse
        self._guessing = True  # first guesses are made until one fails before it ever held
        # decoding steps by how they were decoded: a planned step whose plan held (``planned``),
        # the general step (``general``), and planned steps discarded and decoded again (``discarded``)
        self.planned = self.general = self.discarded = 0

    def summary(self) -> dict[str, int]:
        """How this decoder's steps were decoded, and how many plans it compiled."""
        return {
            "plans_compiled": len(self.steps) + len(self._spare),
            "planned_steps": self.planned,
            "general_steps": self.general,
            "discarded_steps": self.discarded,
        }

    def step(self, shape: object, plan: Plan) -> Callable[..., object] | None:
        """The compiled step of ``plan``, decided at a step of ``shape``, made where it is due;
        None if not."""
        step = self.steps.get(plan)
        if step is None:
            due = self._last.get(shape) == plan or not (plan.skips or plan.measured)
            if due and len(self.steps) < MAX_PLANS:
                step = self.steps[plan] = self._spare.pop(plan, None) or self._compile_step()
        self._last[shape] = plan
        return step

    def add(self, plan: Plan) -> None:
        """``plan``'s step made where it has none, whatever its steps so far (a plan asked for by
        name, as timing one does)."""
        if plan not in self.steps:
            self.steps[plan] = self._compile_step()

    def renew(self) -> None:
        """Every plan's step compiled anew (``compile_step`` again) at its next call."""
        self.steps = {plan: self._compile_step() for plan in self.steps}
        self._spare.clear()

    def guess(self, shape: object) -> Plan | None:
        return self._guess.get(shape)

    def first_guess(self, shape: object, plan_of: Callable[[], Plan | None]) -> Plan | None:
        """The guess of the first step of ``shape`` that asks for one (``plan_of()``, its step
        made now and compiled at its first call); None at every later step, where ``plan_of``
        gives none, where ``MAX_PLANS`` are kept, or once a first guess failed before it ever held
        (a rule whose first guesses do not hold would pay a compile at every new shape)."""
        if shape in self._opened or not self._guessing:
            return None
        self._opened.add(shape)
        plan = plan_of()
        if plan is None or (plan not in self.steps and len(self.steps) >= MAX_PLANS):
            return None
        if plan not in self.steps:
            self.steps[plan] = self._compile_step()
            self._untried.add(plan)
        self._guess[shape] = plan
        return plan

    def held(self, shape: object, plan: Plan) -> None:
        """``plan`` held at a step of ``shape``: guess it next."""
        self._guess[shape] = plan
        self._untried.discard(plan)

    def failed(self, shape: object) -> None:
        """The guess at ``shape`` did not hold. A first guess that never held gives up its place
        among the ``MAX_PLANS`` (its step kept aside, reused if its plan comes due), and no more
        first guesses are made."""
        plan = self._guess.pop(shape, None)
        if plan in self._untried:
            self._untried.discard(plan)
            self._spare[plan] = self.steps.pop(plan)
            self._guessing = False
            self._guess = {other: guess for other, guess in self._guess.items() if guess != plan}
