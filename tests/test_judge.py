"""`ffnskip judge` against a fake OpenAI-compatible server on loopback, and the judgment parsers."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import DATA_DIR, task_utils

from lmeval_ffnskip.cli import main
from lmeval_ffnskip.taskdata import judge
from lmeval_ffnskip.taskdata.conversation import encode_turns


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("The answer is fine. Rating: [[7]]", 7.0),
        ("Rating: [8.5]", 8.5),
        ("first [[2]], on reflection [[4]]", 4.0),
        ("I cannot rate this.", None),
        ("Rating: [[11]]", None),
    ],
)
def test_parse_rating(text, score):
    assert judge.parse_rating(text) == score


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("8 9\nAssistant 2 is more detailed.", (8.0, 9.0)),
        ("7.5, 6\nBoth fine.", (7.5, 6.0)),
        ("Solving it myself: x = 4.\nAssistant 1 erred.\n(3, 9)", (3.0, 9.0)),
        ("Assistant 2 is better.", None),
        ("0 12\nout of range", None),
    ],
)
def test_parse_pair(text, pair):
    assert judge.parse_pair(text) == pair


class FakeJudge(http.server.BaseHTTPRequestHandler):
    """Chat completions: fails first with ``fail`` statuses, then answers ``reply(user_prompt)``."""

    fail: ClassVar[list[int]] = []
    reply = staticmethod(lambda prompt: "[[5]]")
    prompts: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).prompts.append(body["messages"][-1]["content"])
        if self.fail:
            code = self.fail.pop(0)
            self.send_response(code)
            self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(b'{"error": "nope"}')
            return
        out = {
            "choices": [
                {"message": {"role": "assistant", "content": self.reply(body["messages"][-1]["content"])}}
            ]
        }
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("FFNSKIP_DATA_DIR", DATA_DIR)
    FakeJudge.fail, FakeJudge.prompts = [], []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def _samples(tmp_path: Path, task: str, answers: dict[int, list[str]]) -> Path:
    """An lm-eval samples file for the given question ids, as --log_samples writes it."""
    docs = {d["question_id"]: d for d in task_utils(task).load()["test"]}
    lines = [
        json.dumps(
            {"doc_id": i, "doc": docs[qid], "filtered_resps": [encode_turns(a)], "resps": [[encode_turns(a)]]}
        )
        for i, (qid, a) in enumerate(answers.items())
    ]
    path = tmp_path / f"samples_{task}_2026-11-22T10-00-00.000000.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _judge(samples: Path, url: str, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "judgments.json"
    code = main(["judge", str(samples), "--base-url", url, "--cache", str(tmp_path / "cache.jsonl"),
                 "--json", str(out), "--workers", "2", *extra])  # fmt: skip
    return code, json.loads(out.read_text()) if out.exists() else {}


def test_mt_bench_grading_retries_caches_and_flags_unparseable(server, tmp_path):
    # 81: writing (no reference); 111: math (graded with GPT-4's reference answers)
    samples = _samples(
        tmp_path, "mt_bench", {81: ["Aloha!", "A trip."], 111: ["The area is 3.", "Radius 5."]}
    )
    FakeJudge.fail = [429, 503]
    FakeJudge.reply = staticmethod(lambda p: "no verdict here" if "A trip." in p else "Rating: [[6]]")
    code, out = _judge(samples, server, tmp_path)
    assert code == 0
    (result,) = out["results"].values()
    assert result["task"] == "mt_bench"
    by = {(r["question_id"], r["turn"]): r for r in result["judgments"]}
    assert {k: r["prompt"] for k, r in by.items()} == {
        (81, 1): "single-v1",
        (81, 2): "single-v1-multi-turn",
        (111, 1): "single-math-v1",
        (111, 2): "single-math-v1-multi-turn",
    }
    assert by[(81, 2)]["status"] == "unparseable" and by[(81, 2)]["score"] is None
    assert [by[k]["score"] for k in ((81, 1), (111, 1), (111, 2))] == [6.0, 6.0, 6.0]
    assert result["summary"].items() >= {"ok": 3, "unparseable": 1, "error": 0, "score": 6.0}.items()
    math_turn2 = next(p for p in FakeJudge.prompts if "Radius 5." in p)
    reference = (
        task_utils("mt_bench").load()["test"].filter(lambda d: d["question_id"] == 111)[0]["reference"]
    )
    assert "The area is 3." in math_turn2 and reference[1] in math_turn2  # turn 2 graded in context
    assert len(FakeJudge.prompts) == 4 + 2  # two retried failures

    FakeJudge.prompts = []
    assert _judge(samples, server, tmp_path)[1]["results"] == out["results"]
    assert FakeJudge.prompts == []  # every judgment came from the cache


def test_vicuna_pairwise_review_against_gpt35(server, tmp_path):
    samples = _samples(
        tmp_path, "vicuna80", {1: ["Plan your day."], 2: ["Breathe."], 3: ["Python has classes."]}
    )
    replies = {"Plan your day.": "6 8\nAssistant 2 is concise.", "Breathe.": "7 7\nSame."}
    FakeJudge.reply = staticmethod(lambda p: next((r for a, r in replies.items() if a in p), "(9, 2)"))
    code, out = _judge(samples, server, tmp_path)
    assert code == 0
    (result,) = out["results"].values()
    gpt35 = task_utils("vicuna80").load()["test"][0]["gpt35_answer"]
    assert any(gpt35 in p and "Plan your day." in p for p in FakeJudge.prompts)
    summary = result["summary"]
    assert (summary["win"], summary["tie"], summary["loss"]) == (1, 1, 1)
    assert summary["score"] == pytest.approx((8 + 7 + 2) / 3)
    assert summary["gpt35_score"] == pytest.approx((6 + 7 + 9) / 3)
    assert summary["relative_score"] == pytest.approx(17 / 22)


def test_failures_are_errors_not_scores(server, tmp_path, capsys):
    samples = _samples(tmp_path, "vicuna80", {1: ["Plan your day."]})
    FakeJudge.fail = [503] * 3
    code, out = _judge(samples, server, tmp_path, "--retries", "2")
    (result,) = out["results"].values()
    assert code == 1 and result["judgments"][0]["status"] == "error" and result["summary"]["score"] is None
    assert not (tmp_path / "cache.jsonl").exists()  # nothing cached: a rerun asks again

    FakeJudge.fail = [401]
    assert _judge(samples, server, tmp_path)[0] == 2
    assert "HTTP 401" in capsys.readouterr().err


def test_bad_samples_name_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "samples_mt_bench_x.jsonl"
    bad.write_text('{"doc": {}}\n{oops\n')
    assert main(["judge", str(bad), "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert f"{bad}:2: not JSON" in capsys.readouterr().err
    other = tmp_path / "samples_freebaseqa_x.jsonl"
    other.write_text(json.dumps({"doc": {"question": "q"}}) + "\n")
    assert main(["judge", str(other)]) == 2
    assert "not an lm-eval samples file of mt_bench or vicuna80" in capsys.readouterr().err
