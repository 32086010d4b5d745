"""`ffnskip judge` against a fake OpenAI-compatible server on loopback, and the judgment parsers."""

from __future__ import annotations

import base64
import http.server
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
    """Chat completions: fails first with ``fail`` statuses, then answers ``reply(user_prompt)``.
    Records each request's headers; with ``echo``, puts the request's path and headers into the
    error body and the reply, as a misconfigured proxy or debugging server would."""

    fail: ClassVar[list[int]] = []
    reply = staticmethod(lambda prompt: "[[5]]")
    prompts: ClassVar[list[str]] = []
    headers_seen: ClassVar[list[dict[str, str]]] = []
    echo: ClassVar[bool] = False

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).prompts.append(body["messages"][-1]["content"])
        type(self).headers_seen.append(dict(self.headers))
        echoed = json.dumps({"path": self.path, "headers": dict(self.headers)}) if self.echo else ""
        if self.fail:
            # the credential straddles byte 300, where the printed part of an error body ends
            pad = "x" * max(0, 290 - echoed.find("Authorization") - 24) if echoed else ""
            self._send(self.fail.pop(0), pad + echoed or '{"error": "nope"}')
            return
        content = f"{self.reply(body['messages'][-1]['content'])} {echoed}".strip()
        self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}))

    def _send(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _serve() -> Iterator[str]:
    """A FakeJudge on a free loopback port; yields its endpoint root."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("FFNSKIP_DATA_DIR", DATA_DIR)
    FakeJudge.fail, FakeJudge.prompts, FakeJudge.headers_seen, FakeJudge.echo = [], [], [], False
    FakeJudge.reply = staticmethod(lambda prompt: "[[5]]")
    with _serve() as url:
        yield url


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


def test_failures_are_errors_not_scores(server, tmp_path):
    samples = _samples(tmp_path, "vicuna80", {1: ["Plan your day."]})
    FakeJudge.fail = [503] * 3
    code, out = _judge(samples, server, tmp_path, "--retries", "2")
    (result,) = out["results"].values()
    assert code == 1 and result["judgments"][0]["status"] == "error" and result["summary"]["score"] is None
    assert not (tmp_path / "cache.jsonl").exists()  # nothing cached: a rerun asks again


@pytest.mark.parametrize("code", [400, 401, 403, 404])
def test_a_refused_request_is_not_retried_and_stops_the_run(server, tmp_path, capsys, code):
    samples = _samples(tmp_path, "vicuna80", {1: ["a"], 2: ["b"], 3: ["c"], 4: ["d"]})
    FakeJudge.fail = [code] * 4
    assert _judge(samples, server, tmp_path, "--workers", "1")[0] == 2
    assert len(FakeJudge.prompts) == 1  # neither retried nor asked again for the other samples
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ffnskip")]
    assert f"answered HTTP {code}" in line


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_endpoint_that_cannot_be_reached_fails_at_the_first_request(server, tmp_path, capsys):
    samples = _samples(tmp_path, "vicuna80", {1: ["a"], 2: ["b"], 3: ["c"], 4: ["d"]})
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    start = time.monotonic()
    code = _judge(samples, url, tmp_path, "--retries", "1")[0]
    assert code == 2 and time.monotonic() - start < 1.5  # no back-off (2 s before the first retry)
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("ffnskip")]
    assert line.startswith(f"ffnskip judge: cannot reach {url}/chat/completions") and "--base-url" in line
    assert "Traceback" not in err and not (tmp_path / "cache.jsonl").exists()


def test_no_api_key_for_openai_exits_at_once(server, tmp_path, capsys, monkeypatch):
    def no_request(*args, **kwargs):
        raise AssertionError("a request was sent")

    monkeypatch.setattr(judge.urllib.request, "urlopen", no_request)
    samples = _samples(tmp_path, "vicuna80", {1: ["Plan your day."]})
    for env, value in (("OPENAI_API_KEY", None), ("MY_KEY", "")):
        if value is None:
            monkeypatch.delenv(env, raising=False)
        else:
            monkeypatch.setenv(env, value)
        assert main(["judge", str(samples), "--api-key-env", env, "--cache", str(tmp_path / "c.jsonl")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{env} is unset or empty" in err and "--base-url" in err


def test_a_local_endpoint_needs_no_key(server, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    samples = _samples(tmp_path, "vicuna80", {1: ["Plan your day."]})
    assert _judge(samples, server, tmp_path)[0] == 0
    assert FakeJudge.prompts and all("Authorization" not in h for h in FakeJudge.headers_seen)


def _everything_written(tmp_path: Path, capsys, caplog) -> str:
    """Captured stdout and stderr, log records, and every file the judge wrote."""
    captured = capsys.readouterr()
    files = [tmp_path / "judgments.json", tmp_path / "cache.jsonl"]
    return "\n".join([captured.out, captured.err, caplog.text, *(p.read_text() for p in files if p.exists())])


def test_the_api_key_is_never_printed_logged_or_written(server, tmp_path, capsys, caplog, monkeypatch):
    caplog.set_level(logging.WARNING)
    key = "sk-test-SECRET-0123456789abcdef"
    monkeypatch.setenv("JUDGE_KEY", key)
    samples = _samples(tmp_path, "vicuna80", {1: ["Plan your day."]})
    FakeJudge.echo = True
    FakeJudge.fail = [503, 400]  # a retry (logged), then an error body echoing the headers
    assert _judge(samples, server, tmp_path, "--api-key-env", "JUDGE_KEY")[0] == 2
    assert FakeJudge.headers_seen[0]["Authorization"] == f"Bearer {key}"  # the server did get it
    code, out = _judge(samples, server, tmp_path, "--api-key-env", "JUDGE_KEY")
    assert code == 0 and "[[5]]" in out["results"][str(samples)]["judgments"][0]["judgment"]
    assert "Authorization" in (tmp_path / "cache.jsonl").read_text()  # the echo was cached, redacted
    written = _everything_written(tmp_path, capsys, caplog)
    assert "HTTP 400" in written and "retry 1/5" in written
    assert "SECRET" not in written and "Bearer sk-" not in written


def test_credentials_in_the_base_url_are_used_but_never_shown(server, tmp_path, capsys, caplog, monkeypatch):
    caplog.set_level(logging.WARNING)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url = server.replace("http://", "http://alice:PASS-w0rd-SECRET@")
    token = base64.b64encode(b"alice:PASS-w0rd-SECRET").decode()
    samples = _samples(tmp_path, "vicuna80", {1: ["Plan your day."]})
    FakeJudge.echo = True
    FakeJudge.fail = [400]
    assert _judge(samples, url, tmp_path)[0] == 2
    code, out = _judge(samples, url, tmp_path)
    assert code == 0 and out["judge"]["base_url"] == server
    assert [h["Authorization"] for h in FakeJudge.headers_seen] == [f"Basic {token}"] * 2
    written = _everything_written(tmp_path, capsys, caplog)
    assert f"requests to {server};" in written
    assert "SECRET" not in written and token not in written and "alice" not in written


@pytest.mark.parametrize("url", ["http://alice:SECRET@[::1/v1", "http://alice:SECRET@host:port/v1"])
def test_a_malformed_base_url_is_bad_input_and_not_echoed(server, tmp_path, capsys, url):
    samples = _samples(tmp_path, "vicuna80", {1: ["Plan your day."]})
    with pytest.raises(SystemExit) as stop:
        main(["judge", str(samples), "--base-url", url])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--base-url: " in err and "SECRET" not in err


def test_judgments_of_one_endpoint_are_not_reused_for_another(server, tmp_path):
    samples = _samples(tmp_path, "vicuna80", {1: ["Plan your day."]})
    assert _judge(samples, server, tmp_path)[0] == 0
    with _serve() as other:
        FakeJudge.prompts = []
        assert _judge(samples, other, tmp_path)[0] == 0
        assert len(FakeJudge.prompts) == 1  # same judge model name, another server: asked again
    FakeJudge.prompts = []
    assert _judge(samples, server + "/", tmp_path)[0] == 0
    assert FakeJudge.prompts == []  # the first server's reply, from the cache


def test_the_cache_key_leaves_out_credentials(tmp_path):
    def key(url: str, api_key: str | None = None) -> str:
        return judge.Judge(judge.Endpoint(url, "gpt-4", api_key), tmp_path / "cache.jsonl")._key("s", "u")

    assert key("http://a:8000/v1") != key("http://b:8000/v1")
    assert key("http://a:8000/v1") == key("http://u:p@a:8000/v1") == key("http://a:8000/v1", "sk-x")


def test_bad_samples_name_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "samples_mt_bench_x.jsonl"
    bad.write_text('{"doc": {}}\n{oops\n')
    assert main(["judge", str(bad), "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert f"{bad}:2: not JSON" in capsys.readouterr().err
    other = tmp_path / "samples_freebaseqa_x.jsonl"
    other.write_text(json.dumps({"doc": {"question": "q"}}) + "\n")
    assert main(["judge", str(other), "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert "not an lm-eval samples file of mt_bench or vicuna80" in capsys.readouterr().err
