"""Where each row of a batched lm-eval generation ends for its own request.

lm-eval's ``generate_until`` stops a batch only when every row has met a stop sequence (or EOS),
then cuts each answer at its stop sequence; rows that finished earlier go on decoding tokens
nobody keeps. ``kept_lengths`` finds, per row, where generating that row alone would have
stopped, with lm-eval's own stopping criteria, so the skip stats count only those tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from lm_eval.models.utils_hf import stop_sequences_criteria


def kept_lengths(
    generated: torch.Tensor, stop: list[str], tokenizer: Any, eos: int | list[int] | None
) -> list[int]:
    """Per row of ``generated`` ([batch, new tokens], the prompt cut off), the number of tokens up to
    and including the one at which that row, generated alone, would have stopped: the first
    where one of ``stop`` appears in lm-eval's look-back window, or an ``eos`` token."""
    eos_ids = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
    out = []
    for row in generated.tolist():
        criteria = stop_sequences_criteria(tokenizer, stop, 0, 1)
        length = len(row)
        for t in range(1, len(row) + 1):
            if row[t - 1] in eos_ids or any(c(generated.new_tensor([row[:t]]), None) for c in criteria):
                length = t
                break
        out.append(length)
    return out
