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
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the rows and environment here")
    args = parser.parse_args(argv)

    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .bench import add_ideal, decode_speed, default_configs, environment
    from .checkpoints import resolve

    path = resolve(args.pretrained)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = (
        AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).to(args.device).eval()
    )
    configs = default_configs(tuple(float(t) for t in args.targets.split(",")))
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = [
        row
        for bs in tqdm(sizes, desc="batch sizes")
        for row in decode_speed(model, tokenizer, configs, bs, args.new_tokens, args.reps)
    ]
    add_ideal(rows)
    env = environment(model)
    print(json.dumps(env))
    print(f"{'config':<14}{'batch':>6}{'tok/s':>9}{'skip':>7}{'speedup':>9}{'ideal':>8}{'of ideal':>10}")
    for r in rows:
        share = "" if r["share_of_ideal"] is None else f"{r['share_of_ideal']:.0%}"
        print(
            f"{r['config']:<14}{r['batch_size']:>6}{r['tokens_per_s']:>9.2f}{r['skip_ratio']:>7.1%}"
            f"{r['speedup']:>9.3f}{r['ideal_speedup']:>8.3f}{share:>10}"
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
