"""The contract of a skip rule: what the engines tell a method and what they ask of it.

A rule is a class, found by its method name (``rules.rule_class``): a built-in name
(``rules/``, one module each), ``package.module:Name``, or the name of an entry point in the
group ``lmeval_ffnskip.methods``. It subclasses ``FFNRule`` (it skips FFN blocks per token,
driven by ``engine.SkipEngine``) or ``LayerRule`` (it skips whole decoder layers, driven by
``layerskip.LayerSkipEngine``). One instance serves one attached model; it reads its settings
from the ``SkipPolicy`` and the ``LayerLayout`` it is built with.

What a rule declares (class attributes and classmethods, read before any model loads):

- ``needs``: what must be measured on calibration text first. ``"levels"``: the per-layer
  (mean, std) of cos(h, h + FFN), in ``SkipPolicy.calibration``; ``"influence"``: the per-layer
  Block Influence, in ``SkipPolicy.influence``; ``"profile"``: its threshold, cold layers and
  target can come from an ``ffnskip calibrate`` profile (``profile=``).
- ``Options``: its own settings, a dataclass whose fields have defaults and are typed ``bool``,
  ``int``, ``float`` or ``str`` (optionally ``| None``). ``SkipPolicy.from_args`` takes them
  from model_args next to the policy's own, coerced like those, and refuses unknown keys by
  name; the dataclass's ``__post_init__`` checks ranges (raise ValueError naming the value and
  the range). The instance is ``SkipPolicy.options`` and, in a rule, ``self.options``.
- ``check(policy)``: depth-free checks of a policy for this method, run when the policy is
  built (an override calls ``super().check``, which checks ``options``).
- ``depends_on_weights(policy)``: whether its decisions depend on the weights' values, so that
  ``ffnskip bench --shape`` (random weights) can refuse it by name.

An FFN rule, per attached model:

1. ``layout_for(policy, n_layers)`` (what ``SkipPolicy.layout`` runs, also before a model
   loads, to check a depth): the cold layers and k = round(target_skip * n_layers), then
   ``resolve`` (what the rule sets per depth, say layers it never skips), then k is checked
   against ``limit``, the most FFNs one token can skip at that depth.
2. ``Rule(policy, layout)``; the engine hooks only the layers in ``checked`` (similarity
   measured there) and ``skippable`` (FFN skipped there).
3. Each forward pass: ``eligible(since, real)`` says which tokens (rows) the rule applies to
   (default: past warm-up, not refreshed); where any is, ``begin(eligible, positions)`` (the
   absolute position of each row) returns this pass's record of decisions, a ``rows.PassSkips``.
   A record that is ``idle()`` (nothing skipped, nothing to check) sends the pass through the
   stock layers.
4. Each hooked layer, in order: ``enter(layer)`` before its FFN; the rows recorded as skipping
   it (``PassSkips.skip``, for ``skippable`` layers not reached yet) get a zero FFN output and
   are never fed to the FFN. If ``checks_at(layer)``, the cosine cos(h, h + FFN(h)) of the rows
   in ``checking`` is measured after the FFN and handed back as ``measured(layer, rows,
   cosines)`` before the next hooked layer's ``enter`` (or at the pass's end), so what it
   decides applies from the next layer on.
5. At the pass's end the engine reads the record: ``skip_count``, ``never_fired()`` (eligible
   rows whose trigger never fired), ``row_counts`` and ``mask``.

Decisions are plain Python lists: a pass runs once per generated token, and where decoding is
launch-bound a small tensor operation per pass costs what a kernel launch does.

Optionally, ``device()`` returns the rule's device form (``DeviceForm``, below): the same
decisions as tensor operations inside one compiled decoding step (``compiled.py``), with no host
read. By default None: the compiled path refuses the method by name. The base ``DeviceForm``
serves rules whose ``begin`` decides everything up front (dense, static, random): it calls
``begin`` on the host and hands the step its mask. A form that decides inside the step is a
second writing of the rule's decisions; ``tests/test_device_forms.py`` drives every built-in
rule's two forms with the same similarities and requires the same decisions.

A layer rule: ``layout_for`` resolves the cold layers (the engine then sets k to the whole
layers n that save what k FFNs would); ``Rule(policy, layout, protected)`` (``protected``: the
layers that must always run); ``order`` (the layers it skips, in the order they go) and
``limit`` (the most it can skip; ``where`` says why); per pass ``eligible(since, real)`` and
``counts(since)`` (per token, how many of ``order`` it skips), on tensors of the pass's
[batch, length] tokens.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .layout import LayerLayout
from .policy import PolicyFields
from .steps import past_warmup

if TYPE_CHECKING:
    import torch

    from .rows import PassSkips

Need = Literal["levels", "influence", "profile"]
State = dict[str, "torch.Tensor"]  # a device form's per-step tensors


class Rule(abc.ABC):
    """What every rule declares and does; subclass ``FFNRule`` or ``LayerRule``."""

    skips_layers: ClassVar[bool]  # whole layers (LayerRule), or FFN blocks (FFNRule)
    needs: ClassVar[frozenset[Need]] = frozenset()
    # the run every other is compared with (``dense``: skips nothing); reports and gates find it so
    reference: ClassVar[bool] = False
    # its decisions wait for cos(h, h + FFN) to reach ``threshold``: ``never_fired`` counts the
    # eligible tokens it never did (the paper's worst case, its Table 6)
    threshold_trigger: ClassVar[bool] = False
    Options: ClassVar[type | None] = None

    def __init__(self, policy: PolicyFields, layout: LayerLayout) -> None:
        self.policy, self.layout = policy, layout
        own = type(self).Options
        self.options: Any = policy.options if policy.options is not None or own is None else own()

    @classmethod
    def check(cls, policy: PolicyFields) -> None:
        """Raise ValueError where ``policy`` asks what this method cannot do at any depth; here,
        where its ``options`` are not this rule's ``Options``."""
        own = cls.Options
        if policy.options is not None and not (own and isinstance(policy.options, own)):
            takes = f"an instance of {own.__qualname__}" if own else "none"
            raise ValueError(
                f"options={policy.options!r} do not fit method={policy.method}: it takes {takes}"
            )

    @classmethod
    def depends_on_weights(cls, policy: PolicyFields) -> bool:
        """Whether ``policy``'s decisions depend on the weights' values."""
        return True

    @classmethod
    def layout_for(cls, policy: PolicyFields, n_layers: int) -> LayerLayout:
        """``policy`` resolved for ``n_layers`` decoder layers."""
        return LayerLayout.of(policy, n_layers)


class FFNRule(Rule):
    """A rule that skips FFN blocks per token (see the module docstring for when each is called)."""

    skips_layers = False

    @classmethod
    def layout_for(cls, policy: PolicyFields, n_layers: int) -> LayerLayout:
        layout = cls.resolve(policy, super().layout_for(policy, n_layers))
        most = max(cls.limit(layout), 0)
        if layout.k > most:
            raise ValueError(
                f"target_skip={policy.target_skip} asks for {layout.k} of {n_layers} FFNs per token, but "
                f"method={policy.method} can skip at most {most} with cold_start={layout.cold_start}, "
                f"cold_end={layout.cold_end}; lower target_skip or the cold layers"
            )
        return layout

    @classmethod
    def resolve(cls, policy: PolicyFields, layout: LayerLayout) -> LayerLayout:
        """``layout`` with what this rule sets per depth (by default nothing)."""
        return layout

    @classmethod
    @abc.abstractmethod
    def limit(cls, layout: LayerLayout) -> int:
        """The most FFNs one token can skip under ``layout``."""

    @property
    def checked(self) -> range:
        """Layers whose similarity the rule may ask for (by default none)."""
        return range(0)

    @property
    @abc.abstractmethod
    def skippable(self) -> range:
        """Layers whose FFN the rule may skip."""

    def eligible(self, since: list[int], real: list[bool]) -> list[bool]:
        """Per token of a pass, whether the rule applies: ``since`` counts its steps from where
        warm-up counting starts (``steps.StepCounter``), ``real`` is False for padding."""
        return past_warmup(since, real, self.policy.warmup, self.policy.refresh_every)

    @abc.abstractmethod
    def begin(self, eligible: list[bool], positions: list[int]) -> PassSkips:
        """The record of this pass's decisions, for rows ``eligible`` at ``positions``."""

    def device(self) -> DeviceForm | None:
        """The decisions as a compiled step makes them (``DeviceForm``, below), or None: not offered."""
        return None


class LayerRule(Rule):
    """A rule that skips whole decoder layers (attention too) per token."""

    skips_layers = True

    def __init__(self, policy: PolicyFields, layout: LayerLayout, protected: frozenset[int]) -> None:
        super().__init__(policy, layout)
        self.protected = protected  # layers whose KV cache HF reads to size attention masks

    @classmethod
    def check(cls, policy: PolicyFields) -> None:
        super().check(policy)
        if policy.refresh_every:
            raise ValueError(
                f"refresh_every does not apply to method={policy.method}: a layer it skipped has no KV "
                "for that token, so it can never run full again; use refresh_every=0"
            )

    @property
    @abc.abstractmethod
    def order(self) -> tuple[int, ...]:
        """The layers the rule skips, in the order they go: a token skipping n skips the first n."""

    @property
    @abc.abstractmethod
    def limit(self) -> int:
        """The most layers one token can skip."""

    @property
    def where(self) -> str:
        """What bounds ``limit``, for the message that refuses a larger k."""
        return f"with cold_start={self.layout.cold_start}, cold_end={self.layout.cold_end}"

    def eligible(self, since: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Per token ([batch, length]), whether the rule applies: real and past warm-up."""
        return real & (since >= self.policy.warmup)

    @abc.abstractmethod
    def counts(self, since: torch.Tensor) -> torch.Tensor:
        """Per token ([batch, length], ``since`` as in ``eligible``), how many of ``order`` it skips."""


class DeviceForm:
    """A rule's device form: its per-token decisions made inside one compiled decoding step
    (``compiled.py``), as tensor operations, so that the step has no host read.

    Per step the decoder calls, on the host, ``inputs(eligible, positions)`` (plain lists, as the
    eager rule gets them), then inside the traced step ``start``, and per patched layer, in
    order, ``enter`` (before its FFN block, where the layer is skippable) and, where
    ``checks_at``, ``measured`` (after it), and at the end ``never``. Every tensor is [batch]
    (one decoding token per row) unless said otherwise; ``state`` is a dict of tensors that the
    form replaces, never changes in place.

    This base form makes the decisions up front on the host, like ``PassSkips``'s base record
    (dense, static, random): ``begin`` runs on the host and its mask goes in as a tensor."""

    def __init__(self, rule: FFNRule) -> None:
        self.rule = rule
        self.layers = tuple(sorted(set(rule.checked) | set(rule.skippable)))  # the patched layers
        self.skippable = frozenset(rule.skippable)

    def inputs(self, eligible: list[bool], positions: list[int]) -> dict[str, torch.Tensor]:
        """Host tensors for one step: here the record's [batch, n_layers] mask and never-fired rows."""
        import torch  # the rule contract itself loads without torch

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
