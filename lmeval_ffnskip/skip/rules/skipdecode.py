"""``method=skipdecode`` (Del Corro et al., 2023), a layer-skip baseline of the paper's Table 2:
one batch-wide schedule per decoding step.

After ``warmup`` steps, step t bypasses the s_t layers that follow the first ``cold_start``
("warm-up layers"), with s_t growing linearly from 0 to 2n over ``horizon`` steps (mean n) and
staying there; the top layers keep running. Because s_t never shrinks, a bypassed layer never
runs again, so no later token needs the KV it did not write and the cache is never recomputed
(SkipDecode's point). Prompt passes run in full; with ``skip_prompt`` (teacher forcing:
loglikelihood tasks, ``ffnskip fidelity``) a token's step is its position instead.
"""

from __future__ import annotations

import functools

import torch

from ..policy import PolicyFields
from ..rule import LayerRule


class SkipDecode(LayerRule):
    @classmethod
    def depends_on_weights(cls, policy: PolicyFields) -> bool:
        return False

    @functools.cached_property
    def order(self) -> tuple[int, ...]:
        return tuple(i for i in self.layout.mid if i not in self.protected)

    @property
    def limit(self) -> int:
        return len(self.order) // 2  # the block grows to 2n

    @property
    def where(self) -> str:
        return f"{super().where} (2n must fit between)"

    def counts(self, since: torch.Tensor) -> torch.Tensor:
        policy = self.policy
        grown = (since - policy.warmup + 1).clamp(0, policy.horizon)
        return torch.round(2 * self.layout.k * grown / policy.horizon).long()
