"""What a planned compiled step costs by the FFN blocks it leaves out (docs/speed.md).

Compiles, on a shape model (default: the thin Llama-2-7B), one planned decoding step
(``decode.decode_planned_token``) per set of left-out blocks, all at the same cache position, then
calls them round-robin in a tight loop (the static cache rewound before each call) and prints
each one's lower decile and median. Only the hooked (non-cold) layers' blocks can be left out: a
set is checked against them first.

usage: python3 scripts/planned_step_cost.py [--calls 300] [--shape llama-2-7b] [--wide]
       [--sets none=  c8=5-12  c16=5-20  alt12=4-27/2  mid=4-27]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lmeval_ffnskip.instruments.shapes import shape_model, token_batch
from lmeval_ffnskip.skip.decode import CompiledDecoder
from lmeval_ffnskip.skip.engine import make_engine
from lmeval_ffnskip.skip.plans import Plan
from lmeval_ffnskip.skip.provenance import versions
from lmeval_ffnskip.skip.settings import SkipPolicy

SETS = ("none=", "c8=5-12", "c12=4-15", "c16=5-20", "alt12=4-27/2", "mid=4-27")


def layers(spec: str) -> tuple[int, ...]:
    """``a-b`` (inclusive), ``a-b/step``, or empty: the layers a set leaves out."""
    if not spec:
        return ()
    span, _, step = spec.partition("/")
    first, _, last = span.partition("-")
    return tuple(range(int(first), int(last or first) + 1, int(step or 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-2-7b")
    parser.add_argument("--wide", action="store_true", help="the shape's real widths, not thin")
    parser.add_argument("--calls", type=int, default=300, help="calls per set")
    parser.add_argument("--sets", nargs="+", default=SETS, metavar="NAME=LAYERS")
    args = parser.parse_args()
    sets = {name: layers(spec) for name, spec in (s.split("=", 1) for s in args.sets)}
    torch.set_num_threads(2)
    model = shape_model(args.shape, torch.float32, "cpu", thin_widths=not args.wide)
    engine = make_engine(model, SkipPolicy(method="static", warmup=0))
    hooked = set(engine.layout.mid)
    for name, left_out in sets.items():
        if not set(left_out) <= hooked:
            parser.error(f"set {name} leaves out cold layers {sorted(set(left_out) - hooked)}")
    decoder = CompiledDecoder(model, engine)
    batch = token_batch(model.config.vocab_size, 1, "cpu")
    plans = {name: Plan(1, tuple((layer, (0,)) for layer in left)) for name, left in sets.items()}
    times: dict[str, list[float]] = {name: [] for name in sets}
    engine.install()
    with decoder.planned_steps(list(plans.values()), batch["input_ids"], batch["attention_mask"]) as steps:
        for plan in plans.values():
            steps[plan]()  # compiles
        for _ in range(args.calls):
            for name, plan in plans.items():
                start = time.perf_counter()
                steps[plan]()
                times[name].append(time.perf_counter() - start)
    for name, xs in times.items():
        xs.sort()
        row = {"set": name, "left_out": len(sets[name]), "layers": list(sets[name])}
        row |= {"ms_p10": round(1e3 * xs[len(xs) // 10], 3), "ms_p50": round(1e3 * xs[len(xs) // 2], 3)}
        print(json.dumps(row))
    print(json.dumps({"model": f"shape:{args.shape}{'' if args.wide else '-thin'}", **versions()}))


if __name__ == "__main__":
    main()
