"""What a ``torch.cond`` around an FFN block costs in an inductor-compiled step (docs/speed.md).

A stack of thin Llama-like layers (a normed projection standing for attention, then a SwiGLU
FFN; the thin Llama-2-7B shape's widths: 64 and 172, 32 layers, the first and last 4 cold),
compiled whole four ways: dense, without the 24 middle FFNs, and with each middle FFN under a
``torch.cond`` on a flag, all flags set (every block runs) or none (every block skipped). The
difference per middle layer between the branched and the plain steps is what one branch costs;
dense minus skipped per middle layer is what one FFN costs. Lower decile and median of
interleaved calls, batch 1, fp32, 2 threads, on the CPU; each step compiled as the compiled
decoding path compiles its steps (``fullgraph=True, dynamic=False``, inductor's defaults), the
weights closed over (so graph inputs, as the model's parameters are).

usage: python3 scripts/cond_cost.py [--calls 300] [--cpp-wrapper]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lmeval_ffnskip.skip.compiling import own_copy
from lmeval_ffnskip.skip.provenance import versions

LAYERS, WIDTH, FFN_WIDTH, COLD = 32, 64, 172, 4


def stack() -> Callable[[torch.Tensor, torch.Tensor | None, str], torch.Tensor]:
    """The step over one set of random weights; ``mid``: how its middle FFNs run (``dense``,
    ``skip``: left out, ``cond``: each under a branch on ``run[layer]``)."""
    g = torch.Generator().manual_seed(0)
    attn = [torch.randn(WIDTH, WIDTH, generator=g) / 8 for _ in range(LAYERS)]
    gate = [torch.randn(WIDTH, FFN_WIDTH, generator=g) / 8 for _ in range(LAYERS)]
    up = [torch.randn(WIDTH, FFN_WIDTH, generator=g) / 8 for _ in range(LAYERS)]
    down = [torch.randn(FFN_WIDTH, WIDTH, generator=g) / 13 for _ in range(LAYERS)]

    def norm(h: torch.Tensor) -> torch.Tensor:
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)

    def ffn(i: int, h: torch.Tensor) -> torch.Tensor:
        x = norm(h)
        return (F.silu(x @ gate[i]) * (x @ up[i])) @ down[i]

    def step(h: torch.Tensor, run: torch.Tensor | None, mid: str) -> torch.Tensor:
        for i in range(LAYERS):
            h = h + norm(h) @ attn[i]
            if COLD <= i < LAYERS - COLD and mid == "skip":
                continue
            if COLD <= i < LAYERS - COLD and mid == "cond":
                assert run is not None
                h = h + torch.cond(run[i], lambda h, i=i: ffn(i, h), torch.zeros_like, (h,))
            else:
                h = h + ffn(i, h)
        return h

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--cpp-wrapper", action="store_true", help="inductor's C++ wrapper code")
    args = parser.parse_args()
    torch.set_num_threads(2)
    step = stack()

    def compiled(mid: str) -> Callable[..., torch.Tensor]:
        """The step with its middle FFNs run as ``mid`` says, compiled as its own code object."""

        def fn(h: torch.Tensor, run: torch.Tensor | None = None) -> torch.Tensor:
            return step(h, run, mid)

        options = {"cpp_wrapper": args.cpp_wrapper}
        return torch.compile(own_copy(fn), fullgraph=True, dynamic=False, options=options)

    dense, skipped, branched = compiled("dense"), compiled("skip"), compiled("cond")
    flags = {True: torch.ones(LAYERS, dtype=torch.bool), False: torch.zeros(LAYERS, dtype=torch.bool)}
    calls = {
        "dense": dense,
        "skipped": skipped,
        "cond, all run": lambda h: branched(h, flags[True]),
        "cond, all skipped": lambda h: branched(h, flags[False]),
    }
    h = torch.randn(1, 1, WIDTH)
    for call in calls.values():
        for _ in range(20):
            call(h)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.calls):
        for name, call in calls.items():
            start = time.perf_counter()
            call(h)
            times[name].append(time.perf_counter() - start)
    p10 = {name: sorted(xs)[len(xs) // 10] * 1e6 for name, xs in times.items()}
    for name, xs in times.items():
        p50 = sorted(xs)[len(xs) // 2] * 1e6
        print(json.dumps({"step": name, "us_p10": round(p10[name], 1), "us_p50": round(p50, 1)}))
    mid = LAYERS - 2 * COLD
    per_layer = {
        "ffn_us": (p10["dense"] - p10["skipped"]) / mid,
        "cond_running_us": (p10["cond, all run"] - p10["dense"]) / mid,
        "cond_skipping_us": (p10["cond, all skipped"] - p10["skipped"]) / mid,
    }
    print(json.dumps({name: round(value, 2) for name, value in per_layer.items()}))
    print(json.dumps({"cpp_wrapper": args.cpp_wrapper, **versions()}))


if __name__ == "__main__":
    main()
