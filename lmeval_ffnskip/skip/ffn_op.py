"""``torch.ops.ffnskip.gated_mlp``: a gated MLP block (``down(act(gate(x)) * up(x))``, the FFN of
HF Llama, Mistral, Qwen2/3 and Gemma 1-3) whose rows are 0 where their sequence's skip flag is set.

A custom op because the skip decision must not leave the device: inductor treats the op as
opaque (it calls it, it does not trace into it), so a compiled decoding step that calls it stays
one graph with no host read of the flags, and on CUDA captures as one CUDA graph. The CUDA kernel
(``triton_mlp``, Triton) reads the flags inside the kernel and, where every row skips, loads no
weight. Elsewhere (CPU) the op is plain torch, equal to the HF module bit for bit.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# an HF config's ``hidden_act`` / ``hidden_activation`` -> the op's ``activation`` (what is not
# here has no kernel: the caller refuses it by name)
ACTIVATIONS: dict[str, str] = {
    "silu": "silu",
    "swish": "silu",  # transformers' ACT2FN: nn.SiLU
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_tanh": "gelu_tanh",
}


def _gelu_tanh(g: Tensor) -> Tensor:
    return F.gelu(g, approximate="tanh")


# the functions transformers' ACT2FN applies for these names
_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {"silu": F.silu, "gelu_tanh": _gelu_tanh}


def _row_flags(skip: Tensor, x: Tensor) -> Tensor:
    """``skip`` ([B]) shaped to broadcast over x's rows ([B, T, H] or [B, H])."""
    return skip.view(skip.shape + (1,) * (x.dim() - 1))


@torch.library.custom_op("ffnskip::gated_mlp", mutates_args=())
def gated_mlp(x: Tensor, skip: Tensor, gate: Tensor, up: Tensor, down: Tensor, activation: str) -> Tensor:
    """``down(act(gate(x)) * up(x))`` with the rows of sequence b at 0 where ``skip[b]``.

    x: ``[B, T, H]`` or ``[B, H]``; skip: bool ``[B]``; gate, up: ``[F, H]``; down: ``[H, F]``
    (``nn.Linear`` weights, no biases); activation: "silu" or "gelu_tanh" (see ``ACTIVATIONS``).
    Returns a new contiguous tensor of x's shape and dtype. This (CPU) implementation reads the
    flags on the host: where every row skips it returns zeros without touching a weight.
    """
    if activation not in _FUNCTIONS:
        raise ValueError(f"activation {activation!r}: the op knows {sorted(_FUNCTIONS)}")
    if bool(skip.all()):
        return x.new_zeros(x.shape)
    out = F.linear(_FUNCTIONS[activation](F.linear(x, gate)) * F.linear(x, up), down)
    if bool(skip.any()):
        out = torch.where(_row_flags(skip, x), 0, out)
    return out.contiguous()


@gated_mlp.register_kernel("cuda")
def _gated_mlp_cuda(
    x: Tensor, skip: Tensor, gate: Tensor, up: Tensor, down: Tensor, activation: str
) -> Tensor:
    """The Triton kernels: the flags are read on the device (the call can be captured)."""
    from .triton_mlp import gated_mlp_triton  # triton only where CUDA runs the op

    return gated_mlp_triton(x, skip, gate, up, down, activation)


@gated_mlp.register_fake
def _gated_mlp_fake(
    x: Tensor, skip: Tensor, gate: Tensor, up: Tensor, down: Tensor, activation: str
) -> Tensor:
    """x's shape and dtype, contiguous as both implementations return it."""
    return torch.empty_like(x, memory_format=torch.contiguous_format)
