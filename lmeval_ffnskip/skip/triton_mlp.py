"""Triton kernels for a gated MLP (``down(act(gate(x)) * up(x))``) that read a per-row skip flag
on the device: a row whose flag is set gets 0, and a launch in which every row skips loads no
weight. Nothing here reads a tensor's values on the host, so the launcher can run inside a CUDA
graph. Built for decoding (a few rows: memory-bound GEMVs), after TEAL's split-K GEMV
(FasterDecoding/TEAL, ``kernels/sparse_gemv.py``), with the weights in ``nn.Linear``'s layout and
block sizes from a fixed rule of the shapes (no autotuning: it would benchmark during a capture).

Three launches: gate and up (one program reads both weights for a block of F) into an
intermediate ``[M, F]`` in x's dtype; down, split along F where H alone gives too few programs
(fp32 partial sums in a workspace); and, only where split, the sum of the partials.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

ACTIVATIONS: tuple[str, ...] = ("silu", "gelu_tanh")
DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)

# programs per SM each weight-reading launch aims for: enough loads in flight to keep HBM busy
# (a starting point, to be measured on the H100)
PROGRAMS_PER_SM = 4
# bytes of one weight row each program loads per loop iteration (128 bf16 or 64 fp32 elements)
ROW_BYTES = 256
BLOCKS = (64, 32, 16)  # candidate widths of an output block; 16 is tl.dot's minimum
NUM_WARPS = 4
NUM_STAGES = 3


# The kernels call only Triton builtins and their own jit functions (tl.reduce with ``_either``,
# not tl.sum; tl.full, not tl.zeros): Triton's interpreter cannot run its library's jit functions
# where triton was imported before TRITON_INTERPRET was set (torch imports it). Loop bounds are
# constexpr (H, F, a split's share): Triton 3.6's interpreter cannot take a runtime int as one.


@triton.jit
def _either(a: tl.tensor, b: tl.tensor) -> tl.tensor:
    return a | b


@triton.jit
def _row_runs(skip_ptr: tl.tensor, rows: tl.tensor, M: tl.tensor, T: tl.tensor) -> tl.tensor:
    """Whether each row runs: row m is sequence m // T's; rows past M count as skipping."""
    return tl.load(skip_ptr + rows // T, mask=rows < M, other=1) == 0


@triton.jit
def _activate(g: tl.tensor, ACTIVATION: tl.constexpr) -> tl.tensor:
    """SiLU, or GELU's tanh approximation written as ``g * sigmoid(2u)`` (= ``g/2 * (1 + tanh(u))``)."""
    if ACTIVATION == "silu":
        return g / (1.0 + tl.exp(-g))
    else:
        u = 0.7978845608028654 * (g + 0.044715 * g * g * g)  # sqrt(2/pi) * (g + 0.044715 g^3)
        return g / (1.0 + tl.exp(-2.0 * u))


@triton.jit
def _gate_up_kernel(
    x_ptr: tl.tensor,
    skip_ptr: tl.tensor,
    gate_ptr: tl.tensor,
    up_ptr: tl.tensor,
    inter_ptr: tl.tensor,
    M: int,
    T: int,
    H: tl.constexpr,
    F: tl.constexpr,
    ACTIVATION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_K: tl.constexpr,
) -> None:
    """``inter[m, f] = act(x[m] . gate[f]) * (x[m] . up[f])`` for a block of rows and of F; a
    program whose rows all skip returns before loading a weight (and writes nothing: the down
    launch, with the same row blocks, does not read those rows)."""
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    if tl.reduce(_row_runs(skip_ptr, rows, M, T).to(tl.int32), 0, _either) == 0:
        return
    cols = tl.program_id(0) * BLOCK_F + tl.arange(0, BLOCK_F)
    ks = tl.arange(0, BLOCK_K)
    acc_g = tl.full((BLOCK_M, BLOCK_F), 0.0, dtype=tl.float32)
    acc_u = tl.full((BLOCK_M, BLOCK_F), 0.0, dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        k = k0 + ks
        x_mask = (rows[:, None] < M) & (k[None, :] < H)
        xs = tl.load(x_ptr + rows[:, None] * H + k[None, :], mask=x_mask, other=0.0)
        # weight tiles [BLOCK_F, BLOCK_K]: each row's BLOCK_K elements are contiguous (coalesced)
        w_offsets = cols[:, None] * H + k[None, :]
        w_mask = (cols[:, None] < F) & (k[None, :] < H)
        g = tl.load(gate_ptr + w_offsets, mask=w_mask, other=0.0)
        u = tl.load(up_ptr + w_offsets, mask=w_mask, other=0.0)
        if UPCAST:  # Triton's interpreter multiplies bf16 tiles' raw bits: give it fp32 (exact)
            xs = xs.to(tl.float32)
            g = g.to(tl.float32)
            u = u.to(tl.float32)
        # "ieee": fp32 tiles multiply in fp32, not tf32; 16-bit tiles use tensor cores either way
        acc_g = tl.dot(xs, tl.trans(g), acc_g, input_precision="ieee")
        acc_u = tl.dot(xs, tl.trans(u), acc_u, input_precision="ieee")
    inter = _activate(acc_g, ACTIVATION) * acc_u
    mask = (rows[:, None] < M) & (cols[None, :] < F)
    tl.store(inter_ptr + rows[:, None] * F + cols[None, :], inter.to(inter_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _down_kernel(
    inter_ptr: tl.tensor,
    skip_ptr: tl.tensor,
    down_ptr: tl.tensor,
    out_ptr: tl.tensor,
    M: int,
    T: int,
    H: tl.constexpr,
    F: tl.constexpr,
    K_PER_SPLIT: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
) -> None:
    """``out[s, m, n] = inter[m, K_s] . down[n, K_s]`` over split ``s``'s share ``K_s`` of F, 0 where
    row m skips; ``out`` is ``[splits, M, H]`` (with one split: the output itself). A program whose
    rows all skip writes its zeros and returns before loading a weight."""
    split = tl.program_id(1)
    rows = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    runs = _row_runs(skip_ptr, rows, M, T)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    out_ptrs = out_ptr + split * M * H + rows[:, None] * H + cols[None, :]
    out_mask = (rows[:, None] < M) & (cols[None, :] < H)
    if tl.reduce(runs.to(tl.int32), 0, _either) == 0:
        tl.store(out_ptrs, tl.full((BLOCK_M, BLOCK_N), 0.0, dtype=out_ptr.dtype.element_ty), mask=out_mask)
        return
    ks = split * K_PER_SPLIT + tl.arange(0, BLOCK_K)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, dtype=tl.float32)
    for k0 in range(0, K_PER_SPLIT, BLOCK_K):  # the last split's share may pass F: masked
        k = k0 + ks
        h_mask = (rows[:, None] < M) & (k[None, :] < F)
        hs = tl.load(inter_ptr + rows[:, None] * F + k[None, :], mask=h_mask, other=0.0)
        w_mask = (cols[:, None] < H) & (k[None, :] < F)
        w = tl.load(down_ptr + cols[:, None] * F + k[None, :], mask=w_mask, other=0.0)
        if UPCAST:
            hs = hs.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(hs, tl.trans(w), acc, input_precision="ieee")
    # tl.where selects: a skipped row is 0 even where its intermediate is not finite
    acc = tl.where(runs[:, None], acc, 0.0)
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _sum_splits_kernel(
    partial_ptr: tl.tensor, out_ptr: tl.tensor, N: int, SPLITS: tl.constexpr, BLOCK: tl.constexpr
) -> None:
    """``out = partial.sum(0)`` over ``[SPLITS, N]`` fp32 partial sums, in fp32, cast to out's dtype."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < N
    acc = tl.load(partial_ptr + offsets, mask=mask, other=0.0)
    for s in tl.static_range(1, SPLITS):
        acc += tl.load(partial_ptr + s * N + offsets, mask=mask, other=0.0)
    tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)


INTERPRETED: bool = isinstance(_gate_up_kernel, InterpretedFunction)


@dataclass(frozen=True)
class Plan:
    """Block sizes of one call: rows per program (both launches), F per gate/up program, H per
    down program, the reduction chunks (over H, over F), and down's split of F."""

    block_m: int
    block_f: int
    block_n: int
    block_k_up: int
    block_k_down: int
    splits: int
    k_per_split: int


def _block_k(k: int, elem_size: int) -> int:
    """ROW_BYTES' worth of elements; for a small K, half of K padded to a power of two (at least
    16), so that the loop still runs more than once."""
    return min(ROW_BYTES // elem_size, max(16, triton.next_power_of_2(k) // 2))


def _block_out(n: int, row_blocks: int, target: int) -> int:
    """The widest of BLOCKS that still gives ``target`` programs, else the narrowest."""
    return next((b for b in BLOCKS if triton.cdiv(n, b) * row_blocks >= target), BLOCKS[-1])


def plan(m: int, h: int, f: int, elem_size: int, sms: int) -> Plan:
    """The blocks for ``m`` rows, hidden size ``h``, intermediate size ``f``, on ``sms`` SMs."""
    block_m = min(64, max(16, triton.next_power_of_2(m)))  # 16: tl.dot's minimum
    row_blocks = triton.cdiv(m, block_m)
    target = PROGRAMS_PER_SM * sms
    block_f = _block_out(f, row_blocks, target)
    block_n = _block_out(h, row_blocks, target)
    block_k_up, block_k_down = _block_k(h, elem_size), _block_k(f, elem_size)
    # too few down programs along H: split F into shares of whole chunks (at least one each)
    programs = triton.cdiv(h, block_n) * row_blocks
    splits = min(triton.cdiv(target, programs), triton.cdiv(f, block_k_down))
    k_per_split = triton.cdiv(triton.cdiv(f, splits), block_k_down) * block_k_down
    splits = triton.cdiv(f, k_per_split)  # rounding the shares up can leave fewer
    return Plan(block_m, block_f, block_n, block_k_up, block_k_down, splits, k_per_split)


@functools.cache
def _sm_count(device: torch.device) -> int:
    """The device's SMs; the interpreter runs one program at a time: one."""
    if device.type != "cuda" or INTERPRETED:
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _check(x: Tensor, skip: Tensor, gate: Tensor, up: Tensor, down: Tensor, activation: str) -> None:
    """Refuse (ValueError) what the kernels do not handle; reads shapes, never values."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r}: the kernels know {ACTIVATIONS}")
    if x.dim() not in (2, 3):
        raise ValueError(f"x must be [B, T, H] or [B, H], got shape {tuple(x.shape)}")
    if skip.dtype != torch.bool or skip.shape != x.shape[:1]:
        raise ValueError(f"skip must be bool [{x.shape[0]}], got {skip.dtype} {tuple(skip.shape)}")
    h, f = x.shape[-1], gate.shape[0]
    if gate.shape != (f, h) or up.shape != (f, h) or down.shape != (h, f):
        raise ValueError(
            f"weights must be gate, up [F, H] and down [H, F] with H={h}, got "
            f"{tuple(gate.shape)}, {tuple(up.shape)}, {tuple(down.shape)}"
        )
    if x.dtype not in DTYPES or any(w.dtype != x.dtype for w in (gate, up, down)):
        raise ValueError(f"x and weights must share one of {DTYPES}, got {x.dtype}, {gate.dtype}, ...")
    if not all(w.is_contiguous() for w in (gate, up, down)):
        raise ValueError("weights must be contiguous (nn.Linear's layout)")
    if any(t.device != x.device for t in (skip, gate, up, down)):
        raise ValueError("x, skip and the weights must be on one device")
    if max(gate.numel(), x.numel() // h * max(f, h)) >= 2**31:
        raise ValueError("the kernels index with int32: a weight or the intermediate is too large")


def gated_mlp_triton(
    x: Tensor, skip: Tensor, gate: Tensor, up: Tensor, down: Tensor, activation: str
) -> Tensor:
    """``down(act(gate(x)) * up(x))`` with rows of sequences whose ``skip`` flag is set at 0.

    x: ``[B, T, H]`` or ``[B, H]``; skip: bool ``[B]``; gate, up: ``[F, H]``; down: ``[H, F]``;
    activation: "silu" or "gelu_tanh". Returns a contiguous tensor of x's shape and dtype.
    """
    _check(x, skip, gate, up, down, activation)
    h, f = x.shape[-1], gate.shape[0]
    xs = x.reshape(-1, h).contiguous()
    m = xs.shape[0]
    out = torch.empty((m, h), dtype=x.dtype, device=x.device)
    if m == 0:
        return out.view(x.shape)
    flags = skip.contiguous().view(torch.uint8)  # the same bytes, as Triton loads them
    t = m // skip.shape[0]
    p = plan(m, h, f, x.element_size(), _sm_count(x.device))
    upcast = INTERPRETED and x.dtype == torch.bfloat16
    inter = torch.empty((m, f), dtype=x.dtype, device=x.device)
    row_blocks = triton.cdiv(m, p.block_m)
    launch = {"num_warps": NUM_WARPS, "num_stages": NUM_STAGES}
    # Triton launches on the current device
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _gate_up_kernel[(triton.cdiv(f, p.block_f), row_blocks)](
            xs, flags, gate, up, inter, m, t, H=h, F=f,
            ACTIVATION=activation, UPCAST=upcast, BLOCK_M=p.block_m, BLOCK_F=p.block_f, BLOCK_K=p.block_k_up,
            **launch,
        )  # fmt: skip
        partial = (
            out if p.splits == 1 else torch.empty((p.splits, m, h), dtype=torch.float32, device=x.device)
        )
        _down_kernel[(triton.cdiv(h, p.block_n), p.splits, row_blocks)](
            inter, flags, down, partial, m, t, H=h, F=f, K_PER_SPLIT=p.k_per_split,
            UPCAST=upcast, BLOCK_M=p.block_m, BLOCK_N=p.block_n, BLOCK_K=p.block_k_down,
            **launch,
        )  # fmt: skip
        if p.splits > 1:
            n = m * h
            block = min(1024, triton.next_power_of_2(n))
            _sum_splits_kernel[(triton.cdiv(n, block),)](partial, out, n, SPLITS=p.splits, BLOCK=block)
    return out.view(x.shape)
