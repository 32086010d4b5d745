"""The FFN op's CUDA kernels alone against cuBLAS's dense MLP, at one shipped shape's MLP widths.

Per batch size: ``down(act(gate(x)) * up(x))`` by ``F.linear`` (cuBLAS), and
``torch.ops.ffnskip.gated_mlp`` (the Triton kernels) with no row skipping, half the rows
skipping and every row skipping, each timed as a CUDA-graph replay (Triton's
``do_bench_cudagraph``: what one compiled step pays), with the weights' bytes over the time as
GB/s and the op's largest error against cuBLAS relative to the largest output. So a slow kernel
shows itself before a whole-model bench. Prints and writes one JSON.

usage: python3 scripts/kernel_bench.py --json OUT.json [--shape llama-2-7b] [--batch-sizes 1,8]
dry run on a CPU (Triton's interpreter, tiny widths, nothing timed):
  TRITON_INTERPRET=1 python3 scripts/kernel_bench.py --device cpu --dtype float32 --widths 64,96
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from lmeval_ffnskip.instruments.shapes import shape_config
from lmeval_ffnskip.skip import ffn_op  # noqa: F401  (registers torch.ops.ffnskip.gated_mlp)
from lmeval_ffnskip.skip.provenance import versions
from lmeval_ffnskip.skip.triton_mlp import gated_mlp_triton


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-2-7b")
    parser.add_argument("--widths", help="H,F instead of the shape's (a dry run's tiny widths)")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.widths:
        h, f = (int(w) for w in args.widths.split(","))
    else:
        config = shape_config(args.shape)
        h, f = int(config["hidden_size"]), int(config["intermediate_size"])
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    timed = device.type == "cuda"
    torch.manual_seed(0)
    gate, up = (torch.randn(f, h, device=device, dtype=dtype) / h**0.5 for _ in range(2))
    down = torch.randn(h, f, device=device, dtype=dtype) / f**0.5
    weight_bytes = 3 * h * f * gate.element_size()
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        x = torch.randn(batch, 1, h, device=device, dtype=dtype)
        flags = {
            "none": torch.zeros(batch, dtype=torch.bool, device=device),
            "half": torch.arange(batch, device=device) % 2 == 1,
            "all": torch.ones(batch, dtype=torch.bool, device=device),
        }

        def dense(x: torch.Tensor = x) -> torch.Tensor:
            return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)

        def op(skip: torch.Tensor, x: torch.Tensor = x) -> torch.Tensor:
            # the Triton launcher (what the op's CUDA implementation calls), on any device
            return gated_mlp_triton(x, skip, gate, up, down, "silu")

        want = dense().float()
        got = op(flags["none"]).float()
        row = {
            "batch": batch,
            "max_rel_error": ((got - want).abs().max() / want.abs().max()).item(),
            "all_skipped_is_zero": bool((op(flags["all"]) == 0).all()),
        }
        if timed:
            from triton.testing import do_bench_cudagraph

            row["cublas_us"] = do_bench_cudagraph(dense) * 1e3
            for name, skip in flags.items():
                row[f"op_{name}_skipped_us"] = do_bench_cudagraph(lambda skip=skip: op(skip)) * 1e3
            row["op_vs_cublas"] = row["op_none_skipped_us"] / row["cublas_us"]
            row["cublas_gb_s"] = weight_bytes / row["cublas_us"] / 1e3
            row["op_gb_s"] = weight_bytes / row["op_none_skipped_us"] / 1e3
        rows.append(row)
        print(json.dumps(row))
    report = {
        "shape": None if args.widths else args.shape,
        "widths": {"hidden": h, "ffn": f},
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name(device) if timed else str(device),
        "versions": {**versions(), "triton": triton.__version__},
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0 if all(r["all_skipped_is_zero"] and r["max_rel_error"] < 0.05 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
