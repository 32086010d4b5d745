"""The ``ffnskip`` command (also ``python -m lmeval_ffnskip``): each subcommand parses, calls one
library function, prints and writes.

Subcommands: ``bench`` (decode speed), ``judge`` (grade logged chat answers with an LLM judge),
``flops`` (per-token decode FLOPs), ``calibrate`` (similarity curve and a profile for a target
ratio), ``fidelity`` (teacher-forced agreement with dense), ``sweep`` (tasks x methods x ratios
into one results directory), ``compare`` (the main job), ``report`` (HTML page of a results
directory), ``baseline`` / ``check`` (the CI regression gate). Any other arguments go to lm-eval's
own CLI with ``--model ffnskip`` registered, so ``python -m lmeval_ffnskip --model ffnskip --tasks
...`` is ``lm_eval --model ffnskip --tasks ...``.
"""

from __future__ import annotations

import sys

from ..skip.provenance import source_commit
from .instruments import bench_main, calibrate_main, fidelity_main, flops_main
from .judge import judge_main
from .results import baseline_main, check_main, compare_main, report_main, sweep_main

SUBCOMMANDS = {
    "compare": compare_main,
    "bench": bench_main,
    "judge": judge_main,
    "flops": flops_main,
    "sweep": sweep_main,
    "calibrate": calibrate_main,
    "fidelity": fidelity_main,
    "report": report_main,
    "baseline": baseline_main,
    "check": check_main,
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand, or to lm-eval's CLI."""
    argv = sys.argv[1:] if argv is None else argv
    source_commit()  # read now: a long run records the source it started from, not a later edit
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    from lm_eval.__main__ import cli_evaluate

    from .. import _register  # noqa: F401  (registers --model ffnskip)

    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
    return 0
