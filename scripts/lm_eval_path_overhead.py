"""Skipping-off overhead through lm-eval's own generation path (issue 19, item 4).

Times ``generate_until`` of plain ``--model hf`` against ``--model ffnskip`` with skipping switched
off (``threshold=2``: nothing is measured or skipped) and with ``method=dense``, on the same
weights, in interleaved rounds (the order rotated each round), and prints each one's median time
against ``hf``'s. Usage: ``python scripts/lm_eval_path_overhead.py [--rounds 5] [--tokens 96]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from lmeval_ffnskip.harness.lm import FFNSkipLM
from lmeval_ffnskip.inputs.checkpoints import resolve
from lmeval_ffnskip.skip.provenance import versions

PROMPT = "The history of the printing press begins"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrained", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=96)
    args = parser.parse_args()
    path = resolve(args.pretrained)
    common = {"pretrained": path, "device": "cpu", "batch_size": 1}
    models = {
        "hf": HFLM(**common),
        "ffnskip threshold=2": FFNSkipLM(**common, threshold=2.0),
        "ffnskip threshold=2,warmup=0": FFNSkipLM(**common, threshold=2.0, warmup=0),
        "ffnskip method=dense": FFNSkipLM(**common, method="dense"),
    }
    gen = {"until": ["<never in this text>"], "max_gen_toks": args.tokens, "do_sample": False}
    request = [Instance("generate_until", doc={}, arguments=(PROMPT, gen), idx=0)]
    names = list(models)
    for lm in models.values():  # warm-up
        lm.generate_until(request, disable_tqdm=True)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            out = models[name].generate_until(request, disable_tqdm=True)
            times[name].append(time.perf_counter() - start)
            assert out[0], name
    print(versions(), f"threads {torch.get_num_threads()}, {args.tokens} new tokens, {args.rounds} rounds")
    base = statistics.median(times["hf"])
    for name in names:
        med = statistics.median(times[name])
        runs = [round(t, 3) for t in times[name]]
        print(f"{name:<32}{med:8.3f} s  {med / base - 1:+.1%} vs hf   runs: {runs}")


if __name__ == "__main__":
    main()
