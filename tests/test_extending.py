"""docs/extending.md: its example rule, a file outside the package, runs everywhere a built-in one
does (lm-eval, fidelity, bench, a sweep with its report and gate), with the figures the page states."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA_DIR

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
METHOD = "every_other:EveryOther"
# SmolLM2: 30 layers, cold 4 + 4, k = round(0.25 * 30) = 8 of the layers 5, 7, ..., 25
SKIPPED = [5, 7, 9, 11, 13, 15, 17, 19]


@pytest.fixture(scope="module", autouse=True)
def example_importable():
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))
    sys.modules.pop("every_other", None)


def test_the_page_shows_the_example_file_verbatim():
    page = (ROOT / "docs" / "extending.md").read_text()
    shown = re.search(r"<!-- example: docs/examples/every_other.py -->\n```python\n(.*?)```", page, re.S)
    assert shown and shown.group(1) == (EXAMPLES / "every_other.py").read_text()
    assert len((EXAMPLES / "every_other.py").read_text().splitlines()) <= 40


def test_the_documented_lm_eval_command(tmp_path):
    page = (ROOT / "docs" / "extending.md").read_text()
    command = re.search(r"```bash\n(PYTHONPATH=docs/examples FFNSKIP_DATA_DIR.*?)```", page, re.S).group(1)
    words = command.replace("\\\n", " ").split()
    assert words[:2] == ["PYTHONPATH=docs/examples", "FFNSKIP_DATA_DIR=../shared/data"]
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES), "FFNSKIP_DATA_DIR": DATA_DIR}
    argv = [w if w != "out" else str(tmp_path / "out") for w in words[2:]]
    subprocess.run(argv, check=True, env=env, cwd=ROOT, capture_output=True)
    (results,) = (tmp_path / "out").rglob("results_*.json")
    info = json.loads(results.read_text())["config"]["ffnskip"]
    stats = info["stats"]
    assert stats["skip_ratio_eligible"] == pytest.approx(8 / 30)
    assert [i for i, f in enumerate(stats["layer_skip_frequency"]) if f] == SKIPPED
    assert set(stats["layer_skip_frequency"]) == {0.0, 1.0}
    assert info["rule"]["rule"] == METHOD and info["notes"] == []


def test_fidelity_and_bench_take_the_rule_by_name():
    from lmeval_ffnskip.instruments.bench import run_bench
    from lmeval_ffnskip.instruments.fidelity import run_fidelity
    from lmeval_ffnskip.instruments.options import BenchOptions, FidelityOptions

    rows = run_fidelity(
        FidelityOptions(methods=(METHOD,), targets=(0.25,), sequences=1, length=48, warmup=16)
    )["rows"]
    assert [r["name"] for r in rows] == ["dense", f"{METHOD}-0.25"]
    assert rows[1]["skip_ratio"] == pytest.approx(8 / 30)
    options = BenchOptions(
        shape="llama-2-7b",
        thin=True,
        methods=(METHOD,),
        targets=(0.25,),
        batch_sizes=(1,),
        new_tokens=4,
        reps=1,
    )
    bench = run_bench(options, progress=False)
    row = next(r for r in bench["rows"] if r["config"] == f"{METHOD}-0.25")
    assert row["skip_ratio"] == pytest.approx(8 / 32)  # 32 layers: k = 8 of the layers 5, 7, ..., 27


def test_a_sweep_with_its_report_and_gate(tmp_path):
    from lmeval_ffnskip.reporting.charts import COLOURS, colour
    from lmeval_ffnskip.reporting.gate import Limits, baseline, compare
    from lmeval_ffnskip.reporting.report import build, render
    from lmeval_ffnskip.reporting.results import load_runs
    from lmeval_ffnskip.sweep.config import SweepConfig
    from lmeval_ffnskip.sweep.run import run

    os.environ["FFNSKIP_DATA_DIR"] = DATA_DIR
    cfg = SweepConfig(
        tasks=["freebaseqa"], methods=[METHOD], targets=[0.25], limit=2, model_args={"warmup": 4}
    )
    rows = run(cfg, tmp_path, progress=False)
    assert [r["cell"] for r in rows] == ["dense", f"{METHOD}-0.25"]
    assert rows[1]["skip_ratio"] == pytest.approx(8 / 30)
    runs = load_runs(tmp_path)
    page = render(build(runs, "extending"))
    assert f"{METHOD}-0.25" in page
    assert colour(f"{METHOD}-0.25") == colour(f"{METHOD}-0.5") not in COLOURS.values()
    doc = baseline(runs, Limits(), str(tmp_path))
    assert all(check.ok for check in compare(runs, doc, Limits()))
