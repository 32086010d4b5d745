"""``ffnskip judge``: grade logged chat answers with an LLM judge behind an OpenAI-compatible API.

- ``mt_bench`` samples: MT-Bench single-answer grading, one judgment per turn, with FastChat's
  judge prompts (``single-v1``, and the ``-math-`` prompts with GPT-4's reference answers for
  math, reasoning and coding; ``-multi-turn`` for the second turn). Score: ``[[rating]]``, 1-10.
- ``vicuna80`` samples: the paper's pairwise review against the GPT-3.5 answers with the Vicuna
  reviewer prompts (general / coding / math). GPT-3.5 is assistant 1, the model assistant 2.

Judgments are cached on disk per endpoint (a rerun asks only for what is missing), requests are
retried with exponential back-off on rate limits, server errors and timeouts, and a judgment
that cannot be parsed is recorded as ``unparseable``, never as a score. A refused request (bad
key, model or URL) and an endpoint never reached stop the run at once. The API key and any
credentials in the URL are redacted from every error, log line, reply and file.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from .conversation import decode_answers

log = logging.getLogger(__name__)

NEED_REFERENCE = frozenset({"math", "reasoning", "coding"})  # MT-Bench categories graded with a reference
VICUNA_REVIEWER = {"coding": 2, "math": 3}  # question category -> prompt_id; everything else 1
RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504})
KEYED_HOSTS = frozenset({"api.openai.com"})  # hosts that answer nothing without an API key
_NUM = r"(\d+(?:\.\d+)?)"
_TOKEN = r"[\w\-.~+/]+=*"  # RFC 6750's token68: a bearer token, base64 user:password
# credentials a server may echo back (besides our own, replaced wherever they appear): an
# Authorization header's value (its scheme and token), a bearer token, the userinfo of a URL
_LEAKS = (
    (re.compile(rf"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(?:[a-z]+ +)?{_TOKEN}"), r"\1[redacted]"),
    (re.compile(rf"\bBearer\s+{_TOKEN}"), "Bearer [redacted]"),  # as sent: "the bearer of" is prose
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#\s@\"']+@"), r"\1"),
)


class JudgeError(RuntimeError):
    """The endpoint cannot be used, and a retry would not change that: it refused the request (key,
    model name, URL), was never reached, or needs a key that was not given."""


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible chat-completions endpoint and the sampling settings of the judge.
    ``base_url`` may carry ``user:password@``: sent as basic auth when there is no API key."""

    base_url: str
    model: str
    api_key: str | None = None
    temperature: float = 0.0
    max_tokens: int = 2048
    retries: int = 5
    backoff_s: float = 2.0
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        """ValueError for a URL that cannot be split (``http://[::1/``, a port that is no number)."""
        _ = urllib.parse.urlsplit(self.base_url).port

    @property
    def url(self) -> str:
        """``base_url`` without its credentials or a trailing slash: what is shown, written and keyed."""
        parts = urllib.parse.urlsplit(self.base_url)
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl().rstrip("/")

    @property
    def authorization(self) -> str | None:
        """The Authorization header: the API key as a bearer token, else the URL's userinfo."""
        if self.api_key:
            return f"Bearer {self.api_key}"
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.username is None:
            return None
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    @property
    def needs_key(self) -> bool:
        """True when the endpoint is a hosted API that answers nothing without credentials."""
        return self.authorization is None and urllib.parse.urlsplit(self.base_url).hostname in KEYED_HOSTS

    def redact(self, text: str) -> str:
        """``text`` with this endpoint's secrets and any echoed credentials replaced by ``[redacted]``."""
        password = urllib.parse.urlsplit(self.base_url).password
        token = (self.authorization or "").partition(" ")[2]  # the API key, or user:password in base64
        secrets = {self.api_key, token, password, password and urllib.parse.unquote(password)}
        for pattern, replacement in _LEAKS:
            text = pattern.sub(replacement, text)
        for secret in sorted(filter(None, secrets), key=len, reverse=True):
            text = text.replace(secret, "[redacted]")
        return text


class Judge:
    """Cached, retried chat completions. ``calls`` counts the HTTP requests actually made. Once
    the endpoint refused a request for good, every later one fails with the same JudgeError."""

    def __init__(self, endpoint: Endpoint, cache: Path) -> None:
        self.endpoint = endpoint
        self.cache_path = cache
        self.calls = 0
        self._lock = threading.Lock()
        self._cache: dict[str, str] = {}
        self._reached = False  # the endpoint has answered once (an error status counts)
        self._refused: JudgeError | None = None
        if cache.exists():
            for n, line in enumerate(cache.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    entry = json.loads(line)
                    self._cache[entry["key"]] = entry["response"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    log.warning("%s:%d: unreadable cache line skipped (an interrupted write?)", cache, n)

    def _key(self, system: str, user: str) -> str:
        e = self.endpoint
        blob = json.dumps([e.url, e.model, e.temperature, e.max_tokens, system, user])
        return hashlib.sha256(blob.encode()).hexdigest()

    def ask(self, system: str, user: str) -> str:
        """The judge's reply to one prompt (redacted), from the cache or the endpoint."""
        key = self._key(system, user)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            if self._refused is not None:
                raise JudgeError(str(self._refused))
        try:
            reply = self._post([{"role": "system", "content": system}, {"role": "user", "content": user}])
        except JudgeError as err:
            self._refused = err
            raise
        with self._lock:
            self._cache[key] = reply
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self.cache_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "response": reply}) + "\n")
        return reply

    def _post(self, messages: list[dict[str, str]]) -> str:
        e = self.endpoint
        body = json.dumps(
            {"model": e.model, "messages": messages, "temperature": e.temperature, "max_tokens": e.max_tokens}
        ).encode()
        headers = {"Content-Type": "application/json"}
        if e.authorization:
            headers["Authorization"] = e.authorization
        url = e.url + "/chat/completions"
        for attempt in range(e.retries + 1):
            with self._lock:
                self.calls += 1
            wait = e.backoff_s * 2**attempt
            try:
                request = urllib.request.Request(url, body, headers)
                with urllib.request.urlopen(request, timeout=e.timeout_s) as response:
                    self._reached = True
                    return e.redact(_content(response.read()))
            except urllib.error.HTTPError as err:
                self._reached = True
                if err.code not in RETRYABLE:
                    raise JudgeError(
                        f"{url} answered HTTP {err.code}: {self._detail(err)}. Check --base-url, "
                        "--judge-model and the API key variable (--api-key-env)."
                    ) from err
                retry_after = err.headers.get("Retry-After", "")
                wait = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else wait
                problem = f"HTTP {err.code}"
            except urllib.error.URLError as err:
                problem = e.redact(str(err.reason))
                if not self._reached and not isinstance(err.reason, TimeoutError):
                    raise JudgeError(
                        f"cannot reach {url}: {problem}; start the server, or check --base-url"
                    ) from err
            except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
                problem = e.redact(str(err) or repr(err))
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
                problem = f"malformed response ({e.redact(repr(err))})"
            if attempt < e.retries:
                log.warning("judge: %s; retry %d/%d in %.1fs", problem, attempt + 1, e.retries, wait)
                time.sleep(wait)
        raise ConnectionError(f"{url}: {problem} after {e.retries + 1} attempts")

    def _detail(self, err: urllib.error.HTTPError) -> str:
        """The first 300 characters of an error body, on one line, redacted before it is cut."""
        text = err.read(65536).decode(errors="replace")
        return " ".join(self.endpoint.redact(text).split())[:300]


def _content(body: bytes) -> str:
    """The reply text of a chat-completions response (KeyError, TypeError... when malformed)."""
    content = json.loads(body)["choices"][0]["message"]["content"]
    if not isinstance(content, str):
        raise TypeError(f"content is {type(content).__name__}, not text")
    return content


def parse_rating(text: str) -> float | None:
    """MT-Bench's ``[[rating]]`` (or FastChat's fallback ``[rating]``), 1-10; None if absent."""
    for pattern in (rf"\[\[{_NUM}\]\]", rf"\[{_NUM}\]"):
        found = re.findall(pattern, text)
        if found and 1 <= float(found[-1]) <= 10:
            return float(found[-1])
    return None


def parse_pair(text: str) -> tuple[float, float] | None:
    """The Vicuna reviewer's two scores (assistant 1, assistant 2): the first line ``s1 s2``
    (or ``s1, s2``), else a Python tuple ``(s1, s2)`` anywhere; each 1-10; None if absent."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    first = re.fullmatch(rf"\s*\(?\s*{_NUM}\s*[ ,]\s*{_NUM}\s*\)?\s*", lines[0]) if lines else None
    found = first or re.search(rf"\(\s*{_NUM}\s*,\s*{_NUM}\s*\)", text)
    if not found:
        return None
    pair = (float(found.group(1)), float(found.group(2)))
    return pair if all(1 <= s <= 10 for s in pair) else None


@dataclass(frozen=True)
class Query:
    """One judgment to make: what it grades, the prompt, and how to read the reply."""

    meta: dict[str, Any]
    system: str
    user: str
    parse: Callable[[str], Any]


def mt_bench_queries(samples: list[dict], prompts: dict[str, dict]) -> list[Query]:
    """Two single-answer gradings per MT-Bench sample (turn 1; turn 2 in context of turn 1)."""
    out = []
    for s in samples:
        doc, answers = s["doc"], decode_answers(_response(s))
        q, ref = doc["turns"], doc.get("reference") or []
        math = doc["category"] in NEED_REFERENCE and len(ref) >= len(q)
        kind = "single-math-v1" if math else "single-v1"
        fields = [
            {"question": q[0], "answer": answers[0], **({"ref_answer_1": ref[0]} if math else {})},
            {
                "question_1": q[0],
                "answer_1": answers[0],
                "question_2": q[1],
                "answer_2": answers[1],
                **({"ref_answer_1": ref[0], "ref_answer_2": ref[1]} if math else {}),
            },
        ]
        for turn, (name, values) in enumerate(zip((kind, f"{kind}-multi-turn"), fields, strict=True), 1):
            if turn > len(answers):
                continue
            p = prompts[name]
            meta = {
                "question_id": doc["question_id"],
                "category": doc["category"],
                "turn": turn,
                "prompt": name,
            }
            out.append(Query(meta, p["system_prompt"], p["prompt_template"].format(**values), parse_rating))
    return out


def vicuna_queries(samples: list[dict], prompts: dict[int, dict]) -> list[Query]:
    """One pairwise review per Vicuna-80 sample: GPT-3.5 (assistant 1) against the model (2)."""
    out = []
    for s in samples:
        doc = s["doc"]
        p = prompts[VICUNA_REVIEWER.get(doc["category"], 1)]
        user = p["prompt_template"].format(
            question=doc["text"],
            answer_1=doc["gpt35_answer"],
            answer_2=decode_answers(_response(s))[0],
            **p["defaults"],
        )
        meta = {"question_id": doc["question_id"], "category": doc["category"], "prompt": p["prompt_id"]}
        out.append(Query(meta, p["system_prompt"], user, parse_pair))
    return out


def queries(task: str, samples: list[dict]) -> list[Query]:
    """The judgments a samples file of ``task`` needs, with the shipped judge prompts."""
    from .data import locate
    from .jsonfiles import read_jsonl

    if task == "mt_bench":
        return mt_bench_queries(samples, {p["name"]: p for p in read_jsonl(locate("mt_bench_judge_prompts"))})
    return vicuna_queries(
        samples, {p["prompt_id"]: p for p in read_jsonl(locate("vicuna80") / "prompt.jsonl")}
    )


def _response(sample: dict) -> str:
    resp = sample["filtered_resps"]
    return resp[0] if isinstance(resp, list) else resp


def run(judge: Judge, queries: list[Query], workers: int = 4) -> list[dict]:
    """Judge every query (in parallel); each record has ``status`` ok / unparseable / error."""
    from tqdm import tqdm

    def one(q: Query) -> dict:
        try:
            reply = judge.ask(q.system, q.user)
        except ConnectionError as err:
            return {**q.meta, "status": "error", "error": str(err)}
        value = q.parse(reply)
        return {
            **q.meta,
            "status": "ok" if value is not None else "unparseable",
            "score": value,
            "judgment": reply,
        }

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(tqdm(pool.map(one, queries), total=len(queries), desc="judging"))


def summarize(task: str, records: list[dict]) -> dict[str, Any]:
    """Mean scores of the parsed judgments, and how many were unparseable or failed."""
    ok = [r for r in records if r["status"] == "ok"]
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "unparseable", "error")}
    if task == "mt_bench":
        by = {}
        for key in ("turn", "category"):
            groups = sorted({r[key] for r in ok})
            by[key] = {str(g): mean(r["score"] for r in ok if r[key] == g) for g in groups}
        return {**counts, "score": mean(r["score"] for r in ok) if ok else None, **by}
    ours, theirs = [r["score"][1] for r in ok], [r["score"][0] for r in ok]
    return {
        **counts,
        "score": mean(ours) if ok else None,
        "gpt35_score": mean(theirs) if ok else None,
        "relative_score": sum(ours) / sum(theirs) if ok else None,
        "win": sum(a > b for a, b in zip(ours, theirs, strict=True)),
        "tie": sum(a == b for a, b in zip(ours, theirs, strict=True)),
        "loss": sum(a < b for a, b in zip(ours, theirs, strict=True)),
    }


def task_of(samples: list[dict], path: Path) -> str:
    """``mt_bench`` or ``vicuna80``, from the logged documents."""
    doc = samples[0]["doc"] if samples else {}
    if "turns" in doc and "reference" in doc:
        return "mt_bench"
    if "gpt35_answer" in doc:
        return "vicuna80"
    raise ValueError(f"{path}: not an lm-eval samples file of mt_bench or vicuna80 (run with --log_samples)")
