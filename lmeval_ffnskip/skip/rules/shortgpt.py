"""``method=shortgpt`` (Men et al., 2024), a layer-skip baseline of the paper's Table 2: the n
layers with the lowest Block Influence, BI_i = 1 - mean cos(x_i, x_i+1) of a layer's input and
output over calibration text, are dropped. They never run, for any token, prompt included, as
in a pruned model."""

from __future__ import annotations

import functools

import torch

from ..layout import LayerLayout
from ..policy import PolicyFields
from ..rule import LayerRule


class ShortGPT(LayerRule):
    needs = frozenset({"influence"})

    def __init__(self, policy: PolicyFields, layout: LayerLayout, protected: frozenset[int]) -> None:
        super().__init__(policy, layout, protected)
        if policy.influence is None or len(policy.influence) != layout.n_layers:
            raise ValueError(
                "method=shortgpt needs the Block Influence of each layer of this model on "
                "calibration text: with --model ffnskip it is measured once and cached; from Python use "
                "calibrate.with_calibration(policy, model, tokenizer)"
            )

    @functools.cached_property
    def _candidates(self) -> list[int]:
        """The layers it may drop, least influential first."""
        layers = (i for i in range(self.layout.n_layers) if i not in self.protected)
        return sorted(layers, key=self.policy.influence.__getitem__)

    @functools.cached_property
    def order(self) -> tuple[int, ...]:
        return tuple(sorted(self._candidates[: self.layout.k]))

    @property
    def limit(self) -> int:
        return len(self._candidates)

    @property
    def where(self) -> str:
        return f"of the layers other than {sorted(self.protected)} (they size the attention masks)"

    def eligible(self, since: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return real  # pruned: every token, prompt included

    def counts(self, since: torch.Tensor) -> torch.Tensor:
        return torch.full_like(since, len(self.order))
