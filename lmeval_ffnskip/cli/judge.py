"""``ffnskip judge``: grade logged mt_bench / vicuna80 answers with an LLM judge."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _samples_files(paths: list[Path]) -> list[Path]:
    """The given files, and the mt_bench / vicuna80 samples files under the given folders."""
    files = []
    for p in paths:
        if p.is_dir():
            files += sorted(
                f for task in ("mt_bench", "vicuna80") for f in p.rglob(f"samples_{task}_*.jsonl")
            )
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"no samples_mt_bench_*.jsonl or samples_vicuna80_*.jsonl under {paths}")
    return files


def judge_main(argv: list[str]) -> int:
    """Grade logged mt_bench / vicuna80 samples with an LLM judge; exit 1 if some requests failed."""
    import os

    from ..taskdata import judge
    from ..taskdata.data import cache_root
    from ..taskdata.jsonfiles import read_jsonl

    parser = argparse.ArgumentParser(
        prog="ffnskip judge",
        description="Grade lm-eval --log_samples output of mt_bench (single-answer, 1-10) and vicuna80 "
        "(pairwise vs GPT-3.5) with a judge model behind an OpenAI-compatible endpoint.",
    )
    parser.add_argument(
        "samples", nargs="+", type=Path, help="samples_*.jsonl files or lm-eval output folders"
    )
    parser.add_argument(
        "--base-url",
        default="https://api.openai.com/v1",
        help="endpoint root (…/v1); user:password@ in it is sent as basic auth when there is no API key",
    )
    parser.add_argument(
        "--judge-model", default="gpt-4", help="judge model name (default gpt-4, as MT-Bench)"
    )
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the API key")
    parser.add_argument("--workers", type=int, default=4, help="parallel requests (default 4)")
    parser.add_argument("--retries", type=int, default=5, help="retries per request, exponential back-off")
    parser.add_argument("--cache", type=Path, default=cache_root() / "judge_cache.jsonl")
    parser.add_argument("--json", type=Path, help="write every judgment and the summaries here")
    args = parser.parse_args(argv)
    key = os.environ.get(args.api_key_env) or None
    try:
        endpoint = judge.Endpoint(args.base_url, args.judge_model, key, retries=args.retries)
    except ValueError as err:
        parser.error(f"--base-url: {err}")  # not the URL itself: it may hold credentials
    client = judge.Judge(endpoint, args.cache)
    results = {}
    try:
        if endpoint.needs_key:
            raise judge.JudgeError(
                f"{endpoint.url} needs an API key and {args.api_key_env} is unset or empty: set it (or "
                "name another variable with --api-key-env), or pass --base-url of a local endpoint "
                "that needs no key"
            )
        for path in _samples_files(args.samples):
            samples = read_jsonl(path)
            task = judge.task_of(samples, path)
            records = judge.run(client, judge.queries(task, samples), args.workers)
            results[str(path)] = {
                "task": task,
                "summary": judge.summarize(task, records),
                "judgments": records,
            }
    except (ValueError, KeyError, FileNotFoundError, judge.JudgeError) as err:
        print(f"ffnskip judge: {endpoint.redact(str(err))}", file=sys.stderr)
        return 2
    finally:
        if args.json and results:
            payload = {"judge": {"base_url": endpoint.url, "model": args.judge_model}, "results": results}
            args.json.write_text(json.dumps(payload, indent=2))
    print(
        f"{'task':<10}{'score':>7}{'gpt-3.5':>8}{'win/tie/loss':>13}{'ok':>5}{'unparsed':>9}{'error':>6}"
        "  file"
    )
    for path, r in results.items():
        s = r["summary"]
        score = "" if s["score"] is None else f"{s['score']:.2f}"
        other = "" if s.get("gpt35_score") is None else f"{s['gpt35_score']:.2f}"
        wtl = f"{s['win']}/{s['tie']}/{s['loss']}" if "win" in s else ""
        print(
            f"{r['task']:<10}{score:>7}{other:>8}{wtl:>13}{s['ok']:>5}{s['unparseable']:>9}{s['error']:>6}  "
            f"{path}"
        )
    print(f"{client.calls} requests to {endpoint.url}; cache {args.cache}")
    return 1 if any(r["summary"]["error"] for r in results.values()) else 0
