"""The one place that reads transformers' calling conventions.

A decoder forward pass tells the engine which tokens it holds and how many positions its KV
cache already has; that is how a prompt is told from a decoding step. transformers has renamed
the cache keyword before (``past_key_values`` -> ``cache`` in 5.24), so the cache is found by
type as well as by name, and what cannot be read raises ``IncompatibleTransformers`` naming the
installed version instead of being read as "no cache" (which would run every step as a prompt).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import Cache

from .provenance import package_version

# the cache keyword of a decoder's forward, newest name first
CACHE_KEYWORDS = ("cache", "past_key_values")
# the transformers releases the test suite runs on (tox envs `oldest`, `locked`, `latest`)
TESTED_TRANSFORMERS = ("5.0.0", "5.23.0", "5.25.0")


class IncompatibleTransformers(RuntimeError):
    """The installed transformers calls the decoder in a way this package cannot read."""

    def __init__(self, problem: str) -> None:
        super().__init__(
            f"{problem} (transformers {package_version('transformers')}; lmeval-ffnskip is tested on "
            f"{', '.join(TESTED_TRANSFORMERS)}). Install a tested release, e.g. "
            "`pip install -c constraints/locked.txt -e .`, or report the new calling convention."
        )


def find_cache(args: tuple, kwargs: dict) -> Cache | None:
    """The KV cache passed to a decoder forward: by its known keyword names, else by type among
    all arguments. A non-``Cache`` object under a cache-like keyword (not a flag or a tensor such
    as ``cache_position``) is refused by name."""
    for name in CACHE_KEYWORDS:
        value = kwargs.get(name)
        if value is not None:
            if not isinstance(value, Cache):
                raise IncompatibleTransformers(
                    f"the decoder got {name}= of type {type(value).__name__}, not a transformers Cache"
                )
            return value
    for value in (*args, *kwargs.values()):
        if isinstance(value, Cache):
            return value
    for name, value in kwargs.items():
        if ("cache" in name or "past" in name) and not isinstance(value, bool | int | torch.Tensor | None):
            raise IncompatibleTransformers(
                f"the decoder got {name}= of type {type(value).__name__}: it looks like a KV cache, "
                "but it is not a transformers Cache"
            )
    return None


def cache_keyword(model: nn.Module) -> str:
    """The keyword under which ``model``'s forward takes its KV cache (for our own calls)."""
    params = inspect.signature(model.forward).parameters
    for name in CACHE_KEYWORDS:
        if name in params:
            return name
    raise IncompatibleTransformers(
        f"{type(model).__name__}.forward takes none of the cache keywords {', '.join(CACHE_KEYWORDS)}"
    )


def output_cache(output: object) -> Cache:
    """The KV cache a forward pass returned (``.cache``, or ``.past_key_values`` before 5.24)."""
    for name in CACHE_KEYWORDS:
        value = getattr(output, name, None)
        if isinstance(value, Cache):
            return value
    raise IncompatibleTransformers(
        f"the model's output ({type(output).__name__}) holds no Cache under {', '.join(CACHE_KEYWORDS)}"
    )


@dataclass(frozen=True)
class PassTokens:
    """The tokens of one decoder forward pass, read from its arguments into plain lists: a pass
    happens once per generated token, and on a launch-bound device each small tensor op costs
    what a kernel launch does. Per-token lists are flat, row by row ([batch * length])."""

    batch: int
    length: int
    past: int  # positions already in the KV cache
    real: list[bool]  # not padding
    pos: list[int]  # position in the row's sequence (padding not counted; -1 before the first)
    before: list[int]  # [batch] real positions already in the cache

    @classmethod
    def read(cls, args: tuple, kwargs: dict) -> PassTokens:
        """Read a pass from the decoder stack's forward arguments (a forward pre-hook's view)."""
        ref = kwargs.get("input_ids", args[0] if args else None)
        if ref is None:
            ref = kwargs.get("inputs_embeds")
        if not isinstance(ref, torch.Tensor):
            raise IncompatibleTransformers("the decoder pass has neither input_ids nor inputs_embeds")
        batch, length = ref.shape[:2]
        cache = find_cache(args, kwargs)
        past = cache.get_seq_length() if cache is not None else 0
        mask = kwargs.get("attention_mask")
        if not isinstance(mask, torch.Tensor):
            pos = [past + j for _ in range(batch) for j in range(length)]
            return cls(batch, length, past, [True] * (batch * length), pos, [past] * batch)
        if mask.dim() != 2:
            raise NotImplementedError(
                f"a {mask.dim()}-D attention mask cannot be read as padding; pass the 2-D padding mask "
                "[batch, positions] that generate and lm-eval pass"
            )
        if mask.shape[1] != past + length:
            raise IncompatibleTransformers(
                f"the decoder pass has an attention mask over {mask.shape[1]} positions, but "
                f"{past} cached + {length} new"
            )
        # one read: each row's new columns and its count of real positions
        rows = torch.cat((mask[:, past:], mask.sum(1, keepdim=True)), 1).tolist()
        real, pos, before = [], [], []
        for *new, total in rows:
            flags = [bool(v) for v in new]
            count = int(total) - sum(flags)
            before.append(count)
            for flag in flags:
                count += flag
                real.append(flag)
                pos.append(count - 1)
        return cls(batch, length, past, real, pos, before)
