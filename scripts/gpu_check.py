"""Does the compiled decoding path make the eager engine's decisions on this device?

A tiny random Llama (8 layers, fp32) decodes 12 tokens per method (dense, ffnskip firing at its
first check, static) at batch 1 and in a left-padded batch of 3, on the eager engine and on the
compiled path (on CUDA: planned steps as CUDA graphs). Per-pass skip masks must be equal, and
the skip counters; greedy tokens are compared and reported (a random tiny model's logits can
tie within fp32 rounding, where two kernels may pick different tokens). Prints one JSON line
per case; exit 1 where masks or counters differ. Needs only torch and transformers.

usage: python3 scripts/gpu_check.py [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lmeval_ffnskip.skip.decode import CompiledDecoder
from lmeval_ffnskip.skip.engine import attach, generate_fixed
from lmeval_ffnskip.skip.settings import ALWAYS, SkipPolicy

NEW = 12
POLICIES = {
    "dense": SkipPolicy(method="dense"),
    "ffnskip": SkipPolicy(method="ffnskip", target_skip=0.25, warmup=2, threshold=ALWAYS),
    "static": SkipPolicy(method="static", target_skip=0.25, warmup=2, seed=3),
}


def tiny_llama(device: str) -> torch.nn.Module:
    config = AutoConfig.for_model(
        "llama",
        num_hidden_layers=8,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=97,
        max_position_embeddings=256,
        initializer_range=0.25,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device).eval()


def batches(device: str) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    single = torch.randint(3, 97, (1, 7), generator=gen)
    padded = torch.randint(3, 97, (3, 7), generator=gen)
    mask = torch.ones_like(padded)
    mask[0, :3] = mask[2, :1] = 0
    return {
        "batch 1": {"input_ids": single.to(device), "attention_mask": torch.ones_like(single).to(device)},
        "padded batch 3": {
            "input_ids": padded.masked_fill(mask == 0, 0).to(device),
            "attention_mask": mask.to(device),
        },
    }


def check(model: torch.nn.Module, method: str, name: str, batch: dict[str, torch.Tensor]) -> bool:
    policy = POLICIES[method]
    with attach(model, policy, record=True) as eager:
        want = generate_fixed(model, batch, NEW)
    with attach(model, policy, record=True) as engine:
        decoder = CompiledDecoder(model, engine)
        have = decoder.generate(
            batch["input_ids"], batch["attention_mask"], NEW, min_new_tokens=NEW, eos_token_id=1
        )
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
    model = tiny_llama(device)
    results = [check(model, m, name, b) for m in POLICIES for name, b in batches(device).items()]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
