"""The memory-bandwidth bound of decoding on a GPU: every step streams the weights once, so a
batch of B rows decodes at most B x bandwidth / weight bytes tokens a second."""

from __future__ import annotations

import torch
from torch import nn


def streamed_bytes(model: nn.Module) -> int:
    """Bytes of weights one decoding step reads: every parameter, less an input embedding table
    that the output layer does not share (a step reads one row of it per token)."""
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    return sum(p.numel() * p.element_size() for p in model.parameters() if tied or p is not embedding)


def copy_bandwidth(device: torch.device, size: int = 1 << 30, reps: int = 10) -> float:
    """Bytes a second that a device-to-device copy of ``size`` bytes moves (read + write), the
    best of ``reps``, timed by CUDA events."""
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    best = float("inf")
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1000)
    del src, dst
    return 2 * size / best
