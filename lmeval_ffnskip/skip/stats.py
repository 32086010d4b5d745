"""Counters of what a skip run did, and the ratios reported from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# the scalar counters, in the order processes exchange them
COUNTERS = ("tokens", "eligible", "skipped", "never_fired", "host_syncs", "passes", "skipped_by_all")


@dataclass
class SkipStats:
    """Running totals over every forward pass of an attached model."""

    n_layers: int
    tokens: int = 0  # real (non-padding) tokens processed
    eligible: int = 0  # tokens the skip rule applied to
    skipped: int = 0  # FFN blocks skipped, over all tokens and layers
    never_fired: int = 0  # eligible ffnskip tokens whose similarity never reached the threshold
    host_syncs: int = 0  # device-to-host reads of skip decisions
    passes: int = 0  # forward passes with a token eligible for skipping
    skipped_by_all: int = 0  # FFN blocks that no token of such a pass ran, over all its layers
    layer_skipped: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.layer_skipped:
            self.layer_skipped = [0] * self.n_layers

    def merge(self, other: SkipStats) -> None:
        """Add another run's counters (e.g. from another process)."""
        if other.n_layers != self.n_layers:
            raise ValueError(f"cannot merge stats of {other.n_layers} and {self.n_layers} layers")
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.layer_skipped = [a + b for a, b in zip(self.layer_skipped, other.layer_skipped, strict=True)]

    def summary(self) -> dict[str, object]:
        """Counters plus the achieved ratios (None where nothing was eligible)."""
        per_token = self.n_layers
        out: dict[str, object] = asdict(self)
        out["skip_ratio_eligible"] = self.skipped / (self.eligible * per_token) if self.eligible else None
        out["skip_ratio_all"] = self.skipped / (self.tokens * per_token) if self.tokens else None
        # a block some token of the pass runs still streams its weights: what a batch saves
        out["skip_ratio_pass"] = self.skipped_by_all / (self.passes * per_token) if self.passes else None
        out["layer_skip_frequency"] = (
            [n / self.eligible for n in self.layer_skipped] if self.eligible else None
        )
        out["never_reached_threshold"] = self.never_fired / self.eligible if self.eligible else None
        return out
