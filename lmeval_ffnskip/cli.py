"""The ``ffnskip`` command (also ``python -m lmeval_ffnskip``).

``ffnskip bench ...`` measures decode speed; any other arguments go to lm-eval's own CLI with
``--model ffnskip`` registered, so ``python -m lmeval_ffnskip --model ffnskip --tasks ...``
is ``lm_eval --model ffnskip --tasks ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SUBCOMMANDS = ("bench",)


def bench_main(argv: list[str]) -> int:
    """Parse ``ffnskip bench`` arguments, run the measurement, print a table, write JSON."""
    parser = argparse.ArgumentParser(
        prog="ffnskip bench",
        description="Decode tokens/s of HF generate with and without FFN skipping, beside the "
        "ideal speedup t_dense / (t_dense - s * t_ffn).",
    )
    parser.add_argument("--pretrained", default="smollm2-135m", help="embedded alias, HF id or local dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated (default 1,8)")
    parser.add_argument("--targets", default="0.05,0.25,0.5", help="ffnskip target_skip values")
    parser.add_argument("--methods", default="ffnskip", help="methods run at each target (default ffnskip)")
    parser.add_argument("--threshold", type=float, default=0.9, help="ffnskip threshold (default 0.9)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the rows and environment here")
    args = parser.parse_args(argv)

    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .bench import add_ideal, decode_speed, default_configs, environment, prompt_batch
    from .checkpoints import resolve

    path = resolve(args.pretrained)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = (
        AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).to(args.device).eval()
    )
    targets = tuple(float(t) for t in args.targets.split(","))
    configs = default_configs(targets, args.threshold, tuple(args.methods.split(",")))
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = [
        row
        for bs in tqdm(sizes, desc="batch sizes")
        for row in decode_speed(
            model, prompt_batch(tokenizer, bs, model.device), configs, args.new_tokens, args.reps
        )
    ]
    add_ideal(rows)
    env = environment(model)
    print(json.dumps(env))
    print(
        f"{'config':<14}{'batch':>6}{'prefill/s':>10}{'tok/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'peak MB':>8}"
        f"{'skip':>7}{'vs hf':>7}{'speedup':>8}{'ideal':>7}{'of ideal':>9}"
    )
    for r in rows:
        share = "" if r["share_of_ideal"] is None else f"{r['share_of_ideal']:.0%}"
        peak = "" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        print(
            f"{r['config']:<14}{r['batch_size']:>6}{r['prefill_tokens_per_s']:>10.0f}{r['tokens_per_s']:>9.2f}"
            f"{r['latency_ms_p50']:>8.2f}{r['latency_ms_p99']:>8.2f}{peak:>8}{r['skip_ratio']:>7.1%}"
            f"{r.get('vs_hf', 1.0):>7.3f}{r['speedup']:>8.3f}{r['ideal_speedup']:>7.3f}{share:>9}"
        )
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand, or to lm-eval's CLI."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        return bench_main(argv[1:])
    from lm_eval.__main__ import cli_evaluate

    from . import _register  # noqa: F401  (registers --model ffnskip)

    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
    return 0
