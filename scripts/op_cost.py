"""What the FFN op costs per block where it runs, on this machine: a stack of gated MLP blocks
(norm, MLP, residual add; SmolLM2's widths by default, each block its own weights) compiled as
the compiled path compiles its step, once with the stock MLP and once through
``torch.ops.ffnskip.gated_mlp`` with no row skipping, and both eagerly. Lower deciles and medians
of interleaved calls, per block.

usage: python3 scripts/op_cost.py [--hidden 576] [--ffn 1536] [--blocks 21] [--calls 300]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lmeval_ffnskip.skip import ffn_op  # noqa: F401  (registers torch.ops.ffnskip.gated_mlp)
from lmeval_ffnskip.skip.compiling import compiled_step

Weights = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


def _norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


def stack(weights: Weights, through_op: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def run(h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        for gate, up, down, w in weights:
            x = _norm(h, w)
            if through_op:
                h = h + torch.ops.ffnskip.gated_mlp(x, skip, gate, up, down, "silu")
            else:
                h = h + F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)
        return h

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--ffn", type=int, default=1536)
    parser.add_argument("--blocks", type=int, default=21)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    torch.manual_seed(0)
    h, f = args.hidden, args.ffn
    weights = [
        (torch.randn(f, h) / h**0.5, torch.randn(f, h) / h**0.5, torch.randn(h, f) / f**0.5, torch.ones(h))
        for _ in range(args.blocks)
    ]
    fns = {
        "stock, compiled": compiled_step(stack(weights, False)),
        "op, compiled": compiled_step(stack(weights, True)),
        "stock, eager": stack(weights, False),
        "op, eager": stack(weights, True),
    }
    x, skip = torch.randn(1, 1, h), torch.zeros(1, dtype=torch.bool)
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(20):
                fn(x, skip)
        for _ in range(args.calls):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(x, skip)
                times[name].append(time.perf_counter() - start)
    for name, spent in times.items():
        spent.sort()
        p10, p50 = (spent[len(spent) * q // 100] * 1e6 / args.blocks for q in (10, 50))
        print(f"{name:16} per block: p10 {p10:7.1f} us  p50 {p50:7.1f} us")


if __name__ == "__main__":
    main()
