"""`ffnskip report`, `baseline` and `check` on a real (small) SmolLM2 sweep, the page in Chromium."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lmeval_ffnskip.cli import main
from lmeval_ffnskip.report import build, ffn_equivalent, render
from lmeval_ffnskip.results import Run, load_runs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_results_rows_hold_scores_speed_and_flops(sweep_dir):
    runs = load_runs(sweep_dir)
    assert [r.cell for r in runs] == ["dense", "ffnskip-0.25", "static-0.25"]
    dense, skip, _ = runs
    assert dense.skip_ratio == 0 and skip.skip_ratio == pytest.approx(8 / 30)
    assert skip.scores["freebaseqa"].metric == "exact_match" and skip.scores["freebaseqa"].n == 3
    assert "freebaseqa/agreement" in skip.scores and "freebaseqa/agreement" not in dense.scores
    context = build(runs, str(sweep_dir))
    tasks, rows = context["tasks"], context["rows"]
    # the sweep's `lockstep: true` reached the bench as a switch, and the page says how it timed
    assert context["bench_timing"] == ["lockstep"] and "<code>--lockstep</code>" in render(context)
    assert tasks == ["freebaseqa", "freebaseqa/agreement"]
    by_cell = {r["cell"]: r for r in rows}
    assert by_cell["dense"]["speedup"] == pytest.approx(1.0) and by_cell["static-0.25"]["tokens_per_s"] > 0
    flops = json.loads((sweep_dir / "smollm2-135m" / "flops.json").read_text())["rows"][0]
    # the run's own skip pattern: 8 of 30 FFNs on every eligible token
    saved = 8 * flops["ffn_per_layer"][0]
    assert by_cell["ffnskip-0.25"]["mflops"] * 1e6 == pytest.approx(flops["total"] - saved, rel=1e-3)
    assert by_cell["ffnskip-0.25"]["scores"]["freebaseqa"]["delta"] == pytest.approx(
        skip.scores["freebaseqa"].value - dense.scores["freebaseqa"].value
    )
    # fidelity.json's rows, each beside its configuration's batch-1 decode speed
    (fidelity,) = build(runs, str(sweep_dir))["fidelity"]
    measured = json.loads((sweep_dir / "smollm2-135m" / "fidelity.json").read_text())["rows"]
    assert [r["name"] for r in fidelity["rows"]] == ["dense", "ffnskip-0.25", "static-0.25", "random-0.25"]
    assert [r["top1_agreement"] for r in fidelity["rows"]] == [r["top1_agreement"] for r in measured]
    assert fidelity["rows"][0]["top1_agreement"] == 1.0 and fidelity["rows"][1]["top1_agreement"] < 1.0
    assert fidelity["rows"][2]["tokens_per_s"] == by_cell["static-0.25"]["tokens_per_s"]
    assert fidelity["rows"][3]["tokens_per_s"] is None  # random was not benched: left blank


def test_report_opens_in_chromium_with_charts_drawn(sweep_dir, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("FFNSKIP_REQUIRE_BROWSER"):
            pytest.fail("FFNSKIP_REQUIRE_BROWSER is set but no chromium is installed")
        pytest.skip("no chromium (Debian: apt-get install chromium); .ci/run installs it")
    playwright = pytest.importorskip("playwright.sync_api")
    page_path = tmp_path / "report.html"
    assert main(["report", str(sweep_dir), "-o", str(page_path)]) == 0
    html = page_path.read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing to fetch
    assert "https://" not in html
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: None if r.url.startswith("file:") else problems.append(r.url))
        page.goto(page_path.as_uri())
        charts = page.eval_on_selector_all(
            "svg.chart",
            """svgs => svgs.map(s => ({
                title: s.querySelector('title').textContent,
                width: s.getBoundingClientRect().width,
                marks: [...s.querySelectorAll('polyline.series, circle.point, rect.bar, polygon.band')]
                    .filter(m => { const b = m.getBBox(); return b.width > 0 || b.height > 0; }).length,
            }))""",
        )
        # the leaderboard sorts: click "achieved skip" twice -> descending, static/ffnskip first
        header = page.locator("#leaderboard-table th", has_text="achieved skip")
        header.click()
        header.click()
        first = page.locator("#leaderboard-table tbody tr").first.locator("td").nth(1).inner_text()
        browser.close()
    assert problems == []
    titles = [c["title"] for c in charts]
    assert any("vs FFN skip ratio" in t for t in titles)
    assert any("vs decode speed" in t for t in titles)
    assert any("per-layer FFN skip frequency" in t for t in titles)
    assert any("FLOPs per token" in t for t in titles)
    assert all(c["width"] > 100 and c["marks"] > 0 for c in charts), charts
    assert first in ("ffnskip-0.25", "static-0.25")
    assert "Fidelity to the dense model" in html and "random-0.25" in html.split('id="fidelity"')[1]


def _edit(path: Path, change: callable) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_check_passes_then_catches_regressions_and_bad_input(sweep_dir, tmp_path, capsys):
    base = tmp_path / "baseline.json"
    # the fixture's bench (4 tokens, one rep) is timing noise: no speed floor until it is edited below
    args = ["--tolerance", "freebaseqa/agreement=2", "--speedup-floor", "0"]
    assert main(["baseline", str(sweep_dir), "-o", str(base), *args]) == 0
    assert json.loads(base.read_text())["limits"]["per_task"] == {"freebaseqa/agreement": 2.0}
    md = tmp_path / "summary.md"
    assert main(["check", str(sweep_dir), "--baseline", str(base), "--markdown", str(md)]) == 0
    assert "pass" in capsys.readouterr().out and md.read_text().startswith("### ffnskip check: pass")

    work = tmp_path / "work"
    shutil.copytree(sweep_dir, work)
    cell = work / "smollm2-135m" / "ffnskip-0.25" / "results.json"
    original = cell.read_text()

    def lower_agreement(doc: dict) -> None:
        doc["agreement"]["freebaseqa"]["rougeL"] -= 2.5  # beyond the task's own 2-point tolerance

    _edit(cell, lower_agreement)
    assert main(["check", str(work), "--baseline", str(base), "--markdown", str(md)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "!! smollm2-135m    ffnskip-0.25      freebaseqa/agreement" in out
    assert "| FAIL | smollm2-135m | ffnskip-0.25 | freebaseqa/agreement rougeL_vs_dense |" in md.read_text()
    # the same drop passes with a looser tolerance for that task
    assert main(["check", str(work), "--baseline", str(base), "--tolerance", "freebaseqa/agreement=3"]) == 0

    def fewer_skips(doc: dict) -> None:
        doc["config"]["ffnskip"]["stats"]["skip_ratio_eligible"] -= 0.05

    cell.write_text(original)
    _edit(cell, fewer_skips)
    assert main(["check", str(work), "--baseline", str(base)]) == 1
    assert "!! smollm2-135m    ffnskip-0.25      achieved skip ratio" in capsys.readouterr().out

    cell.write_text(original)
    bench = work / "smollm2-135m" / "bench.json"

    def slower(doc: dict) -> None:
        row = next(r for r in doc["rows"] if r["config"] == "static-0.25")
        row["speedup"] = 0.001

    _edit(bench, slower)
    assert main(["check", str(work), "--baseline", str(base), "--speedup-floor", "0.01"]) == 1
    assert "!! smollm2-135m    static-0.25       decode speedup" in capsys.readouterr().out

    # bad input: exit 2, naming the file and the problem
    cell.write_text(original[: len(original) // 2])
    assert main(["check", str(work), "--baseline", str(base)]) == 2
    assert f"{cell}: not readable as JSON" in capsys.readouterr().err
    shutil.rmtree(cell.parent)
    assert main(["check", str(work), "--baseline", str(base)]) == 2
    assert "no run for smollm2-135m/ffnskip-0.25" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('{"runs": []}')
    assert main(["check", str(sweep_dir), "--baseline", str(broken)]) == 2
    assert "not an ffnskip baseline" in capsys.readouterr().err
    assert main(["check", str(sweep_dir), "--baseline", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: cannot read the baseline" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing"), "-o", str(tmp_path / "r.html")]) == 2
    assert "no such results file or directory" in capsys.readouterr().err


def test_check_refuses_runs_of_another_limit(sweep_dir, tmp_path, capsys):
    base = tmp_path / "baseline.json"
    assert main(["baseline", str(sweep_dir), "-o", str(base)]) == 0

    def other_limit(doc: dict) -> None:
        doc["runs"][0]["scores"]["freebaseqa"]["n"] = 50

    _edit(base, other_limit)
    assert main(["check", str(sweep_dir), "--baseline", str(base)]) == 2
    assert "scored on 3 samples, the baseline on 50" in capsys.readouterr().err


def test_plain_lm_eval_output_folders(sweep_dir, tmp_path):
    """lm_eval --output_path layouts: runs named from their model_args, `--model hf` as dense."""
    for cell, model, args in (
        ("ffnskip-0.25", "ffnskip", "pretrained=smollm2-135m,target_skip=0.25,warmup=2"),
        ("dense", "hf", "pretrained=smollm2-135m"),
    ):
        doc = json.loads((sweep_dir / "smollm2-135m" / cell / "results.json").read_text())
        for key in ("sweep_cell", "agreement"):
            doc.pop(key, None)
        doc["config"].update(model=model, model_args=args)
        folder = tmp_path / "out" / f"run-{model}"
        folder.mkdir(parents=True)
        (folder / "results_2026-11-22T10-00-00.json").write_text(json.dumps(doc))
    runs = load_runs(tmp_path / "out")
    assert [(r.cell, r.method) for r in runs] == [("dense", "dense"), ("ffnskip-0.25-warmup2", "ffnskip")]
    rows = build(runs, "out")["rows"]
    assert rows[1]["skip"] == pytest.approx(8 / 30) and rows[1]["scores"]["freebaseqa"]["delta"] is not None
    assert main(["report", str(tmp_path / "out"), "-o", str(tmp_path / "r.html")]) == 0


def test_layer_methods_are_plotted_in_ffn_equivalents():
    def run(method: str, info: dict) -> Run:
        stats = {"stats": {"skip_ratio_eligible": 0.2}}
        return Run("m", f"{method}-0.25", method, 0.25, Path("."), {}, {**stats, **info}, {}, {}, None, None)

    assert ffn_equivalent(run("shortgpt", {"ffn_share": 0.75})) == pytest.approx(0.2 / 0.75)
    assert ffn_equivalent(run("static", {"ffn_share": None})) == 0.2
    assert ffn_equivalent(run("skipdecode", {})) == 0.2  # a run from before the share was recorded


def test_every_json_records_versions_and_check_names_a_change(sweep_dir, tmp_path, capsys):
    from lmeval_ffnskip.hf_compat import versions

    now = versions()
    assert now["torch"] and now["transformers"] and now["lm_eval"]
    cells = sorted(sweep_dir.glob("*/*/results.json"))
    measured = [sweep_dir / "smollm2-135m" / f"{name}.json" for name in ("bench", "flops", "fidelity")]
    assert cells and all(p.exists() for p in measured)
    for path in cells:
        assert json.loads(path.read_text())["versions"] == now, path
    assert json.loads(measured[0].read_text())["environment"]["transformers"] == now["transformers"]
    for path in measured[1:]:
        assert json.loads(path.read_text())["versions"] == now, path
    base = tmp_path / "baseline.json"
    assert main(["baseline", str(sweep_dir), "-o", str(base), "--speedup-floor", "0"]) == 0
    doc = json.loads(base.read_text())
    assert doc["versions"] == now
    assert main(["check", str(sweep_dir), "--baseline", str(base)]) == 0
    assert "note:" not in capsys.readouterr().out
    doc["versions"]["transformers"] = "5.0.0"
    base.write_text(json.dumps(doc))
    assert main(["check", str(sweep_dir), "--baseline", str(base)]) == 0  # a note, not a failure
    out = capsys.readouterr().out
    assert (
        f"note: the baseline was made with transformers 5.0.0, these results with {now['transformers']}"
        in out
    )
