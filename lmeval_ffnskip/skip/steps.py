"""Warm-up counting: where each row's steps start over the passes of a generation, and which
tokens are past their warm-up. Plain lists: this runs once per forward pass."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .hf_compat import PassTokens


def past_warmup(since: list[int], real: list[bool], warmup: int, refresh_every: int) -> list[bool]:
    """Per token: real, at least ``warmup`` steps ``since`` where counting starts, and not one of
    the every ``refresh_every``-th (0: none) eligible tokens that run full."""
    return [
        ok and step >= warmup and not (refresh_every and (step - warmup + 1) % refresh_every == 0)
        for step, ok in zip(since, real, strict=True)
    ]


class StepCounter:
    """Where each row's warm-up counting starts, across the passes of a generation: at its first
    position with ``skip_prompt``, else at its first generated token. Counts the decoding passes
    (over a filled KV cache) it saw, which callers check against the tokens they generated."""

    def __init__(self, skip_prompt: bool) -> None:
        self.skip_prompt = skip_prompt
        self.prompt_lengths: list[int] | None = None  # [batch] real prompt tokens per row
        self.decoding_passes = 0

    def since(self, tokens: PassTokens) -> list[int]:
        """Steps of each token ([batch * length]) from where counting starts (negative: prompt)."""
        if tokens.past and tokens.length > 1 and not self.skip_prompt:
            raise NotImplementedError(
                f"a pass of {tokens.length} tokens over {tokens.past} cached positions (chunked "
                "prefill or assisted decoding) cannot be told apart from generated tokens; prefill "
                "in one pass, decode one token per pass, or set skip_prompt=true"
            )
        if tokens.past:
            self.decoding_passes += 1
        if tokens.past == 0 or self.prompt_lengths is None or len(self.prompt_lengths) != tokens.batch:
            # a pass over a cache this counter did not fill: its contents count as the prompt
            if tokens.past == 0:
                n = tokens.length
                self.prompt_lengths = [sum(tokens.real[i : i + n]) for i in range(0, len(tokens.real), n)]
            else:
                self.prompt_lengths = tokens.before
        if self.skip_prompt:
            return tokens.pos
        n = tokens.length
        return [p - self.prompt_lengths[i // n] for i, p in enumerate(tokens.pos)]
