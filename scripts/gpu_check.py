"""Does the compiled decoding path make the eager engine's decisions on this device?

A tiny random Llama (8 layers, fp32) decodes 12 tokens on the eager engine and on the compiled
path (on CUDA: one CUDA graph per step, the skippable FFN blocks by the op's Triton kernels) in
three cases: ffnskip firing at its first check at batch 1 and in a left-padded batch of 3, and
ffnskip at a threshold that some similarities reach in the padded batch (there a similarity
within the two paths' rounding of the threshold could decide otherwise: the Triton kernels and
cuBLAS sum in different orders). Each path generates twice (the compiled path's first call
compiles; its second one's host syncs on CUDA are counted: a few per generation, reading the
prompt's mask and the decisions, none per step). Per-pass skip masks must be equal, and the
skip counters; greedy tokens are compared and reported (a random tiny model's logits can tie
within fp32 rounding, where two kernels may pick different tokens). Prints one JSON line per
case; exit 1 where masks or counters differ. Needs torch, transformers and triton.

usage: python3 scripts/gpu_check.py [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from contextlib import nullcontext

import torch

from lmeval_ffnskip.instruments.shapes import tiny_batches, tiny_model
from lmeval_ffnskip.skip.decode import CompiledDecoder
from lmeval_ffnskip.skip.engine import attach, generate_fixed, make_engine
from lmeval_ffnskip.skip.policy import ALWAYS
from lmeval_ffnskip.skip.settings import SkipPolicy

NEW = 12
POLICIES = {
    "ffnskip": SkipPolicy(method="ffnskip", target_skip=0.25, warmup=2, threshold=ALWAYS),
    "ffnskip-0.92": SkipPolicy(method="ffnskip", target_skip=0.25, warmup=2, threshold=0.92),
}


def check(model: torch.nn.Module, method: str, name: str, batch: dict[str, torch.Tensor]) -> bool:
    policy = POLICIES[method]
    with attach(model, policy, record=True) as eager:
        generate_fixed(model, batch, NEW)
        want = generate_fixed(model, batch, NEW)
    with nullcontext(make_engine(model, policy, record=True)) as engine:
        decoder = CompiledDecoder(model, engine)
        args = (batch["input_ids"], batch["attention_mask"], NEW)
        decoder.generate(*args, min_new_tokens=NEW, eos_token_id=1)  # compiles (and captures)
        with warnings.catch_warnings(record=True) as syncs:
            if model.device.type == "cuda":  # each synchronising call warns
                torch.cuda.set_sync_debug_mode("warn")
            try:
                have = decoder.generate(*args, min_new_tokens=NEW, eos_token_id=1)
            finally:
                if model.device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
    masks = len(eager.history) == len(engine.history) and all(
        torch.equal(a.cpu(), b.cpu()) for a, b in zip(eager.history, engine.history, strict=True)
    )
    counters = {k: v for k, v in eager.stats.summary().items() if k != "host_syncs"} == {
        k: v for k, v in engine.stats.summary().items() if k != "host_syncs"
    }
    tokens = (want.cpu() == have.cpu()).float().mean().item()
    print(
        json.dumps(
            {
                "method": method,
                "batch": name,
                "masks_equal": masks,
                "counters_equal": counters,
                "tokens_equal": tokens,
                # host syncs in the second generation (the first compiles): the prompt's mask and
                # the decisions' read, none per step
                "cuda_syncs": sum("synchroniz" in str(w.message) for w in syncs),
                "compile_s": round(decoder.compile_s, 1),
                **decoder.summary(),
            }
        )
    )
    return masks and counters


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    device = parser.parse_args().device
    model = tiny_model("llama").to(device)
    named = dict(zip(("batch 1", "padded batch 3"), tiny_batches(device), strict=True))
    cases = (("ffnskip", "batch 1"), ("ffnskip", "padded batch 3"), ("ffnskip-0.92", "padded batch 3"))
    results = [check(model, method, name, named[name]) for method, name in cases]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
