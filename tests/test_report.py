"""`ffnskip report`, `baseline` and `check` on a real (small) SmolLM2 sweep, the page in Chromium."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lmeval_ffnskip.cli import main
from lmeval_ffnskip.reporting.report import build, ffn_equivalent, render
from lmeval_ffnskip.reporting.results import Run, load_runs


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
    # the 135M model answers none of the 3 questions: exact match cannot separate methods
    assert tasks == ["freebaseqa/agreement"] and context["constant_zero"] == ["freebaseqa"]
    by_cell = {r["cell"]: r for r in rows}
    assert by_cell["dense"]["speedup"] == pytest.approx(1.0) and by_cell["static-0.25"]["tokens_per_s"] > 0
    flops = json.loads((sweep_dir / "smollm2-135m" / "flops.json").read_text())["rows"][0]
    fidelity_json = json.loads((sweep_dir / "smollm2-135m" / "fidelity.json").read_text())
    fidelity_rows = {r["name"]: r for r in fidelity_json["rows"]}
    # the run's own skip pattern: 8 of 30 FFNs on every eligible token
    saved = 8 * flops["ffn_per_layer"][0]
    assert by_cell["ffnskip-0.25"]["mflops"] * 1e6 == pytest.approx(flops["total"] - saved, rel=1e-3)
    assert by_cell["ffnskip-0.25"]["top1"] == fidelity_rows["ffnskip-0.25"]["top1_agreement"]
    # fidelity.json's rows, each beside its configuration's batch-1 decode speed
    (fidelity,) = build(runs, str(sweep_dir))["fidelity"]
    measured = json.loads((sweep_dir / "smollm2-135m" / "fidelity.json").read_text())["rows"]
    assert [r["name"] for r in fidelity["rows"]] == ["dense", "ffnskip-0.25", "static-0.25", "random-0.25"]
    assert [r["top1_agreement"] for r in fidelity["rows"]] == [r["top1_agreement"] for r in measured]
    assert fidelity["rows"][0]["top1_agreement"] == 1.0 and fidelity["rows"][1]["top1_agreement"] < 1.0
    assert fidelity["rows"][2]["tokens_per_s"] == by_cell["static-0.25"]["tokens_per_s"]
    assert fidelity["rows"][3]["tokens_per_s"] is None  # random was not benched: left blank


def test_report_opens_in_chromium_with_charts_drawn(sweep_dir, tmp_path, browser_tab):
    page = browser_tab
    page_path = tmp_path / "report.html"
    assert main(["report", str(sweep_dir), "-o", str(page_path)]) == 0
    html = page_path.read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing to fetch
    assert "https://" not in html
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
    # every mark inside its chart's plot area; every legend label in one colour across charts
    placed = page.eval_on_selector_all(
        "svg.chart",
        """svgs => svgs.map(s => {
            const plot = s.querySelector('rect.plot');
            const box = plot && {x: +plot.getAttribute('x'), y: +plot.getAttribute('y'),
                                 w: +plot.getAttribute('width'), h: +plot.getAttribute('height')};
            const pts = [...s.querySelectorAll('circle.point')]
                .map(c => [+c.getAttribute('cx'), +c.getAttribute('cy')])
                .concat([...s.querySelectorAll('polyline.series')].flatMap(l => l.getAttribute('points')
                    .trim().split(/\\s+/).map(p => p.split(',').map(Number))));
            const swatches = [...s.querySelectorAll('rect.swatch')]
                .map(r => [r.dataset.label, r.getAttribute('fill')]);
            return {title: s.querySelector('title').textContent, box, pts, swatches};
        })""",
    )
    # the leaderboard sorts: click "skipped" (achieved) twice -> descending, static/ffnskip first
    header = page.locator("table.leaderboard").first.locator("th", has_text="skipped")
    header.click()
    header.click()
    first = page.locator("table.leaderboard").first.locator("tbody tr").first.locator("td").first.inner_text()
    outside = [
        (c["title"], x, y)
        for c in placed
        for x, y in c["pts"]
        if not (c["box"]["x"] - 0.5 <= x <= c["box"]["x"] + c["box"]["w"] + 0.5)
        or not (c["box"]["y"] - 0.5 <= y <= c["box"]["y"] + c["box"]["h"] + 0.5)
    ]
    assert all(c["box"] for c in placed) and outside == []
    colours: dict[str, set[str]] = {}
    for c in placed:
        if "FLOPs" not in c["title"]:  # bars are coloured by part (attention, FFN, ...), not by method
            for label, fill in c["swatches"]:
                colours.setdefault(label.split("-")[0], set()).add(fill)
    assert {"ffnskip", "static"} <= set(colours) and all(len(f) == 1 for f in colours.values()), colours
    fills = [next(iter(f)) for f in colours.values()]
    assert len(set(fills)) == len(fills)  # no two methods share a colour
    assert problems == []
    titles = [c["title"] for c in charts]
    assert any("vs FFN skip ratio" in t for t in titles)
    assert any("vs decode speed" in t for t in titles)
    assert any("per-layer FFN skip frequency" in t for t in titles)
    assert any("FLOPs per token" in t for t in titles)
    assert all(c["width"] > 100 and c["marks"] > 0 for c in charts), charts
    assert first in ("ffnskip-0.25", "static-0.25")
    assert str(sweep_dir) not in html and "/tmp" not in html  # no machine path in the page
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


def _one_run(root: Path) -> Path:
    """An lm-eval output folder of one dense run (model m, task t: acc 0.5 on 4 samples)."""
    folder = root / "run-hf"
    folder.mkdir(parents=True)
    doc = {
        "config": {"model": "hf", "model_args": "pretrained=m"},
        "results": {"t": {"acc,none": 0.5}},
        "n-samples": {"t": {"effective": 4}},
    }
    (folder / "results_2026-11-22T10-00-00.json").write_text(json.dumps(doc))
    return root


def _run0(change: callable) -> callable:
    return lambda doc: change(doc["runs"][0])


def _score(change: callable) -> callable:
    return _run0(lambda run: change(run["scores"]["t"]))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (_run0(lambda run: run.pop("cell")), "runs[0] has no 'cell'"),
        (
            _score(lambda s: s.update(value="50")),
            """runs[0] (m/dense), score 't' has 'value' = "50", not a number""",
        ),
        (_score(lambda s: s.pop("n")), "runs[0] (m/dense), score 't' has no 'n'"),
        (
            _score(lambda s: s.update(higher_is_better="yes")),
            """runs[0] (m/dense), score 't' has 'higher_is_better' = "yes", not true or false""",
        ),
        (
            _run0(lambda run: run.update(scores=["t"])),
            """runs[0] (m/dense) has 'scores' = ["t"], not an object""",
        ),
        (
            _run0(lambda run: run.update(skip_ratio="0")),
            """runs[0] (m/dense) has 'skip_ratio' = "0", not a number or null""",
        ),
        (lambda doc: doc["runs"].__setitem__(0, "m/dense"), """runs[0] is "m/dense", not an object"""),
        (
            lambda doc: doc.update(runs={"m/dense": {}}),
            """the document has 'runs' = {"m/dense": {}}, not a list""",
        ),
        (
            lambda doc: doc.update(versions=["torch"]),
            """the document has 'versions' = ["torch"], not an object or null""",
        ),
        (
            lambda doc: doc["limits"].update(tolerence=2),
            "limits has an unknown key 'tolerence' (known: per_task, skip_band, speedup_floor, tolerance)",
        ),
        (
            lambda doc: doc["limits"].update(skip_band="0.02"),
            """limits has 'skip_band' = "0.02", not a number""",
        ),
    ],
)
def test_check_names_the_broken_entry_of_a_baseline(tmp_path, capsys, change, problem):
    results, base = _one_run(tmp_path / "out"), tmp_path / "baseline.json"
    assert main(["baseline", str(results), "-o", str(base)]) == 0
    assert main(["check", str(results), "--baseline", str(base)]) == 0
    capsys.readouterr()
    _edit(base, change)
    assert main(["check", str(results), "--baseline", str(base)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ffnskip check: {base}: {problem}; ")
    assert err.rstrip().endswith(f"re-record it with `ffnskip baseline RESULTS -o {base}`")


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
        if model == "ffnskip":  # one right answer, so exact match is not 0 everywhere and has a delta
            doc["results"]["freebaseqa"]["exact_match,none"] = 1 / 3
        folder = tmp_path / "out" / f"run-{model}"
        folder.mkdir(parents=True)
        (folder / "results_2026-11-22T10-00-00.json").write_text(json.dumps(doc))
    runs = load_runs(tmp_path / "out")
    assert [(r.cell, r.method) for r in runs] == [("dense", "dense"), ("ffnskip-0.25-warmup2", "ffnskip")]
    rows = build(runs, "out")["rows"]
    assert rows[1]["skip"] == pytest.approx(8 / 30)
    assert rows[1]["scores"]["freebaseqa"]["delta"] == pytest.approx(100 / 3)
    assert main(["report", str(tmp_path / "out"), "-o", str(tmp_path / "r.html")]) == 0


def test_layer_methods_are_plotted_in_ffn_equivalents():
    def run(method: str, info: dict) -> Run:
        stats = {"stats": {"skip_ratio_eligible": 0.2}}
        return Run("m", f"{method}-0.25", method, 0.25, Path("."), {}, {**stats, **info}, {}, {}, None, None)

    assert ffn_equivalent(run("shortgpt", {"ffn_share": 0.75})) == pytest.approx(0.2 / 0.75)
    assert ffn_equivalent(run("static", {"ffn_share": None})) == 0.2
    assert ffn_equivalent(run("skipdecode", {})) == 0.2  # a run from before the share was recorded


def test_every_json_records_versions_and_check_names_a_change(sweep_dir, tmp_path, capsys):
    from lmeval_ffnskip.skip.provenance import versions

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
    doc["versions"]["lmeval-ffnskip commit"] = "0" * 40  # recorded, not compared
    base.write_text(json.dumps(doc))
    assert main(["check", str(sweep_dir), "--baseline", str(base)]) == 0
    assert "note:" not in capsys.readouterr().out
    doc["versions"]["transformers"] = "4.99.0"
    base.write_text(json.dumps(doc))
    assert main(["check", str(sweep_dir), "--baseline", str(base)]) == 0  # a note, not a failure
    out = capsys.readouterr().out
    assert (
        f"note: the baseline was made with transformers 4.99.0, these results with {now['transformers']}"
        in out
    )


def test_compare_prints_the_table_from_the_files_and_writes_the_report(sweep_dir, tmp_path, capsys):
    """`ffnskip compare` over a finished sweep (its cells and extras reused, nothing recomputed):
    every figure in the table is the one in the results, fidelity and bench files."""
    from lmeval_ffnskip.reporting.compare import comparison
    from lmeval_ffnskip.reporting.results import load_runs

    work = tmp_path / "out"
    shutil.copytree(sweep_dir, work)
    assert main(["compare", "--out", str(work), "--config", str(sweep_dir.parent / "sweep.yaml")]) == 0
    out = capsys.readouterr().out
    rows = {r["config"]: r for r in comparison(load_runs(work))}
    assert list(rows) == ["dense", "ffnskip-0.25", "static-0.25"]
    model = work / "smollm2-135m"
    cell = json.loads((model / "static-0.25" / "results.json").read_text())
    fidelity = {r["name"]: r for r in json.loads((model / "fidelity.json").read_text())["rows"]}
    bench = {r["config"]: r for r in json.loads((model / "bench.json").read_text())["rows"]}
    static = rows["static-0.25"]
    assert static["skip_ratio"] == cell["config"]["ffnskip"]["stats"]["skip_ratio_eligible"] > 0.2
    assert static["agreement"]["freebaseqa"] == cell["agreement"]["freebaseqa"]["rougeL"]
    assert static["top1"] == fidelity["static-0.25"]["top1_agreement"] < 1
    assert static["speedup"] == bench["static-0.25"]["speedup"]
    assert rows["dense"]["skip_ratio"] == 0 and rows["dense"]["top1"] == 1.0
    line = next(x for x in out.splitlines() if "static-0.25" in x)
    assert f"{static['top1']:.3f}" in line and f"{static['skip_ratio']:.1%}" in line
    assert (work / "report.html").exists() and str(tmp_path) not in (work / "report.html").read_text()


def test_axes_cover_the_data_and_methods_keep_their_colour():
    from lmeval_ffnskip.reporting import charts

    for lo, hi in [(0.0, 34.0), (0.3, 0.97), (12.0, 812.0), (-3.0, 7.5), (5.0, 5.0)]:
        ticks = charts._ticks(lo, hi)
        assert ticks[0] <= lo and ticks[-1] >= hi, (lo, hi, ticks)
    assert charts.colour("static") == charts.colour("static-0.25") != charts.colour("ffnskip")
    assert charts.colour(charts.FRONT) not in {
        charts.colour(m) for m in ("dense", "ffnskip", "static", "spread")
    }
    chart = charts.line_chart("t", [("static", [(0.0, 1.0), (0.5, 3.3)])], "x", "y", front=[(0.5, 3.3)])
    assert f'fill="{charts.colour("static")}" class="swatch" data-label="static"' in chart
    assert f'fill="{charts.colour(charts.FRONT)}" class="swatch" data-label="{charts.FRONT}"' in chart


def test_a_metric_zero_in_every_run_gets_no_column_or_chart(sweep_dir):
    from lmeval_ffnskip.reporting.leaderboard import constant_zero
    from lmeval_ffnskip.reporting.report import build
    from lmeval_ffnskip.reporting.results import load_runs

    runs = load_runs(sweep_dir)
    zero = constant_zero(runs)
    assert zero == sorted(t for t in {t for r in runs for t in r.scores} if all(
        r.scores[t].value == 0 for r in runs if t in r.scores))  # fmt: skip
    page = build(runs, "x")
    assert not set(zero) & set(page["tasks"])
    assert not any(f": {t} (" in c["title"] for t in zero for c in page["skip_curves"])
    assert page["tasks"][0].endswith("/agreement")
    assert [t["model"] for t in page["tables"]] == ["smollm2-135m"]


def test_speed_by_model_section_renders_bench_jsons(sweep_dir, tmp_path, capsys):
    """`ffnskip report --bench`: the shape benches in docs/bench/cpu, one row per file and batch size,
    every figure the file's."""
    from lmeval_ffnskip.reporting.report import build, scaling_charts, speed_scaling
    from lmeval_ffnskip.reporting.results import read_bench

    here = Path(__file__).parent.parent / "docs" / "bench" / "cpu"
    files = [here / f"{name}.json" for name in ("llama-3.2-1b", "qwen2.5-0.5b", "smollm2-135m")]
    docs = [read_bench(p) for p in files]
    rows = speed_scaling(docs)
    assert [(r["model"], r["batch"]) for r in rows] == [
        (name, batch) for name in ("llama-3.2-1b", "qwen2.5-0.5b", "smollm2-135m") for batch in (1, 8)
    ]
    first = {r["config"]: r for r in docs[0]["rows"] if r["batch_size"] == 1}
    assert rows[0]["random"] and rows[0]["off_vs_hf"] == first["ffnskip-off"]["vs_hf"]
    assert rows[0]["skip_all"] == first["skip-all"]["speedup"] > 2
    assert rows[0]["check_ms"] == first["checks-only"]["ms_per_read"]
    assert [c["config"] for c in rows[0]["configs"]][:3] == ["ffnskip-0.05", "ffnskip-0.25", "ffnskip-0.5"]
    (chart,) = scaling_charts(rows)  # one device; 25% and 50% per model (5% is below the cut)
    assert chart["svg"].count('class="series"') == 3 and chart["svg"].count('class="point"') == 6
    assert all(f'data-label="{r["model"]}"' in chart["svg"] for r in rows)
    page = tmp_path / "r.html"
    assert main(["report", str(sweep_dir), "-o", str(page), "--bench", *map(str, files)]) == 0
    html = page.read_text()
    assert 'id="scaling"' in html and 'llama-3.2-1b <span class="muted">(random)</span>' in html
    static = next(c for c in rows[1]["configs"] if c["config"] == "static-0.25")  # batch 8
    assert f"static-0.25 (25.0%; {static['skip_ratio_pass']:.1%} by every row)" in html
    thin = here.parent / "cpu-thin" / "llama-2-7b.json"
    assert main(["report", str(sweep_dir), "-o", str(page), "--bench", str(thin)]) == 0
    html = page.read_text()
    assert 'llama-2-7b-thin <span class="muted">(random, thin)</span>' in html
    assert "<em>thin</em> rows" in html
    assert build([], "x")["scaling"] == []  # no --bench: no section
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["report", str(sweep_dir), "-o", str(page), "--bench", str(bad)]) == 2
    assert "not an ffnskip bench JSON" in capsys.readouterr().err
