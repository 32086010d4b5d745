"""A policy resolved for a model's depth: the cold layers at each end and k, the FFNs skipped per
eligible token."""

from __future__ import annotations

from dataclasses import dataclass

from .policy import PolicyFields


def default_cold(n_layers: int) -> int:
    """Cold layers at each end, scaled to depth: the authors' 5 of 40, at least 1."""
    return max(1, round(n_layers / 8))


@dataclass(frozen=True)
class LayerLayout:
    """Depth-resolved settings (recorded in every results file): the first ``cold_start`` and last
    ``cold_end`` layers always run their FFN; ``k`` FFNs are skipped per eligible token (a
    layer-skip rule: whole layers); ``hot``: non-cold layers the rule always runs as well."""

    n_layers: int
    cold_start: int
    cold_end: int
    k: int
    method: str = "ffnskip"
    hot: tuple[int, ...] = ()

    @classmethod
    def of(cls, policy: PolicyFields, n_layers: int) -> LayerLayout:
        """``policy``'s cold layers (``default_cold`` where unset), checked against the depth, and
        k = round(target_skip * n_layers)."""
        cold_start = default_cold(n_layers) if policy.cold_start is None else policy.cold_start
        cold_end = default_cold(n_layers) if policy.cold_end is None else policy.cold_end
        if cold_start + cold_end > n_layers:
            raise ValueError(
                f"cold_start={cold_start} + cold_end={cold_end} exceeds the model's {n_layers} layers"
            )
        return cls(n_layers, cold_start, cold_end, round(policy.target_skip * n_layers), policy.method)

    @property
    def mid(self) -> range:
        """The non-cold layers."""
        return range(self.cold_start, self.n_layers - self.cold_end)
