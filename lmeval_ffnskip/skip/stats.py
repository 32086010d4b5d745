"""Counters of what a skip run did, and the ratios reported from them."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

# the scalar counters, in the order processes exchange them
COUNTERS = (
    "tokens",
    "eligible",
    "skipped",
    "never_fired",
    "host_syncs",
    "passes",
    "skipped_by_all",
    "decoded_tokens",
    "decoded_skipped",
)
# the counters of tokens a request kept (the rest also count decoding its discarded tokens)
KEPT = ("tokens", "eligible", "skipped", "never_fired")


@dataclass
class SkipStats:
    """Running totals over every forward pass of an attached model.

    ``tokens`` .. ``never_fired`` and ``layer_skipped`` count the tokens a caller kept: in a
    batched generation, rows go on decoding after their request's stop sequence until the
    longest row ends, and those steps are taken back out (``RowLedger``). ``decoded_tokens`` and
    ``decoded_skipped`` count every token that went through the model, and the per-pass
    counters (``passes``, ``skipped_by_all``, ``host_syncs``) every pass, since that is what
    the hardware ran.
    """

    n_layers: int
    tokens: int = 0  # real (non-padding) tokens processed
    eligible: int = 0  # tokens the skip rule applied to
    skipped: int = 0  # FFN blocks skipped, over all tokens and layers
    never_fired: int = 0  # eligible ffnskip tokens whose similarity never reached the threshold
    host_syncs: int = 0  # device-to-host reads of skip decisions
    passes: int = 0  # forward passes with a token eligible for skipping
    skipped_by_all: int = 0  # FFN blocks that no token of such a pass ran, over all its layers
    decoded_tokens: int = 0  # real tokens processed, kept or not
    decoded_skipped: int = 0  # FFN blocks skipped over those
    layer_skipped: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.layer_skipped:
            self.layer_skipped = [0] * self.n_layers

    def drain(self) -> SkipStats:
        """What these counters hold, and start them again from zero."""
        fresh, taken = (
            SkipStats(self.n_layers),
            dataclasses.replace(self, layer_skipped=list(self.layer_skipped)),
        )
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(fresh, f.name))
        return taken

    def merge(self, other: SkipStats) -> None:
        """Add another run's counters (e.g. from another process)."""
        if other.n_layers != self.n_layers:
            raise ValueError(f"cannot merge stats of {other.n_layers} and {self.n_layers} layers")
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.layer_skipped = [a + b for a, b in zip(self.layer_skipped, other.layer_skipped, strict=True)]

    def add_tokens(self, tokens: int, eligible: int, skipped: int, never_fired: int) -> None:
        """Count tokens of one pass (kept and decoded alike)."""
        self.tokens += tokens
        self.eligible += eligible
        self.skipped += skipped
        self.never_fired += never_fired
        self.decoded_tokens += tokens
        self.decoded_skipped += skipped

    def take_back(self, discarded: SkipStats) -> None:
        """Remove tokens no caller kept from the kept counters (decoded ones stay)."""
        for name in KEPT:
            setattr(self, name, getattr(self, name) - getattr(discarded, name))
        self.layer_skipped = [a - b for a, b in zip(self.layer_skipped, discarded.layer_skipped, strict=True)]

    def summary(self) -> dict[str, object]:
        """Counters plus the achieved ratios (None where nothing was eligible)."""
        per_token = self.n_layers
        out: dict[str, object] = asdict(self)
        out["skip_ratio_eligible"] = self.skipped / (self.eligible * per_token) if self.eligible else None
        out["skip_ratio_all"] = self.skipped / (self.tokens * per_token) if self.tokens else None
        out["skip_ratio_decoded"] = (
            self.decoded_skipped / (self.decoded_tokens * per_token) if self.decoded_tokens else None
        )
        # a block some token of the pass runs still streams its weights: what a batch saves
        out["skip_ratio_pass"] = self.skipped_by_all / (self.passes * per_token) if self.passes else None
        out["layer_skip_frequency"] = (
            [n / self.eligible for n in self.layer_skipped] if self.eligible else None
        )
        out["never_reached_threshold"] = self.never_fired / self.eligible if self.eligible else None
        return out


@dataclass(frozen=True)
class RowCount:
    """What one row (a batch entry) of one pass counted."""

    tokens: int
    eligible: int
    never_fired: int
    layers: tuple[int, ...]  # the FFN blocks it skipped, one entry per token and block


def unskipped_rows(real: list[bool], length: int) -> list[RowCount]:
    """The row counts of a pass that skipped nothing: ``length`` tokens per row, flat ``real``."""
    return [RowCount(sum(real[i : i + length]), 0, 0, ()) for i in range(0, len(real), length)]


class RowLedger:
    """Per row, what each pass of one ``generate`` call counted, so that the passes after the
    one that made a row's last kept token can be taken back out of the stats (``discarded``).
    Pass 0 is the prefill; pass j > 0 decodes the row's j-th generated token."""

    def __init__(self, n_layers: int) -> None:
        self.n_layers = n_layers
        self.passes: list[list[RowCount]] = []

    def add(self, rows: list[RowCount]) -> None:
        self.passes.append(rows)

    def discarded(self, kept: list[int]) -> SkipStats:
        """The counts of every pass at or after ``kept[row]`` (the generated tokens row ``row``
        keeps: its request needed passes 0 .. kept[row] - 1)."""
        out = SkipStats(self.n_layers)
        for index, rows in enumerate(self.passes):
            for row, count in enumerate(rows):
                if index >= kept[row]:
                    out.tokens += count.tokens
                    out.eligible += count.eligible
                    out.never_fired += count.never_fired
                    out.skipped += len(count.layers)
                    for layer in count.layers:
                        out.layer_skipped[layer] += 1
        return out
