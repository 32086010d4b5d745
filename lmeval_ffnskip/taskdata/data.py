"""Benchmark data: a local copy under ``$FFNSKIP_DATA_DIR``, else a verified download, cached.

``locate("freebaseqa")`` returns the file's path. With ``FFNSKIP_DATA_DIR`` set (tests and CI
point it at ``../shared/data``) the copy there is used; otherwise the file is downloaded once
from its upstream source with a progress bar, checked, and kept under
``$XDG_CACHE_HOME/lmeval-ffnskip/data``. Offline with no copy, the error says what to do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ENV = "FFNSKIP_DATA_DIR"


def _check_freebaseqa(path: Path) -> None:
    questions = json.loads(path.read_text(encoding="utf-8"))["Questions"]
    if not questions or "Parses" not in questions[0]:
        raise ValueError("no Questions with Parses")


def _check_jsonl(*keys: str) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        first = json.loads(path.read_text(encoding="utf-8").split("\n", 1)[0])
        if missing := [k for k in keys if k not in first]:
            raise ValueError(f"records lack {missing}")

    return check


def _moved(check: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    """Build step for a file used as downloaded: check it, then move it into place."""

    def build(download: Path, target: Path) -> None:
        check(download)
        download.rename(target)

    return build


def _wikitext_from_parquet(download: Path, target: Path) -> None:
    """Salesforce/wikitext's test parquet -> the raw text file, one row per line."""
    import pyarrow.parquet as pq

    lines = pq.read_table(download, columns=["text"]).column("text").to_pylist()
    text = "".join(lines)
    if " = " not in text:
        raise ValueError("no ' = Title = ' headings")
    target.write_text(text, encoding="utf-8")


def _cnn_from_parquet(download: Path, target: Path) -> None:
    """abisee/cnn_dailymail 3.0.0 test parquet -> JSON lines with id, article, highlights."""
    import pyarrow.parquet as pq

    rows = pq.read_table(download, columns=["id", "article", "highlights"]).to_pylist()
    if not rows:
        raise ValueError("no stories")
    target.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _from_tar(
    folder_of: Callable[[str], str | None], check: Callable[[Path], None] | None = None
) -> Callable[[Path, Path], None]:
    """Build step that copies the archive's files that ``folder_of`` maps to a subfolder of
    the target (None: leave the file out), then runs ``check`` on the result."""

    def build(download: Path, target: Path) -> None:
        with tarfile.open(download) as tar:
            picked = [(m, folder_of(m.name)) for m in tar.getmembers() if m.isfile()]
            picked = [(m, sub) for m, sub in picked if sub is not None]
            if not picked:
                raise ValueError("none of the expected files is in the archive")
            for m, sub in picked:
                out = target / sub / m.name.rsplit("/", 1)[-1]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(m).read())
        if check is not None:
            check(target)

    return build


def _mmlu_split(name: str) -> str | None:
    """hendrycks' ``data/{dev,test,val}/*.csv`` keep their split folder."""
    parts = name.split("/")
    return parts[-2] if name.endswith(".csv") and parts[-2:-1] in (["dev"], ["test"], ["val"]) else None


def _check_mmlu(target: Path) -> None:
    if len(list((target / "test").glob("*.csv"))) != 57:
        raise ValueError("expected 57 test CSVs in data/test/")


def _story_bucket(name: str) -> str | None:
    parts = name.split("/")
    return parts[-2] if name.endswith(".story") and parts[-2] in ("small", "mid", "large") else None


def _vicuna_table(name: str) -> str | None:
    files = ("question.jsonl", "gpt35_answer.jsonl", "reviewer.jsonl", "prompt.jsonl")
    return "" if name.split("/")[-2:-1] == ["table"] and name.rsplit("/", 1)[-1] in files else None


LAYER_SKIP = "https://codeload.github.com/Ajay1994/layer-skip/tar.gz/60fadcbd"
FASTCHAT = "https://raw.githubusercontent.com/lm-sys/FastChat/main/fastchat/llm_judge/data/mt_bench"
HF = "https://huggingface.co/datasets"


def cache_root() -> Path:
    """Where downloaded data, dequantised checkpoints, calibration profiles and judge replies are
    cached (``$XDG_CACHE_HOME/lmeval-ffnskip``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmeval-ffnskip"


@dataclass(frozen=True)
class Source:
    """One data file or folder: where it lies below the data directory, where it comes from,
    and how a download becomes it (``build(download, target)`` raises ValueError if invalid)."""

    relpath: str
    url: str
    build: Callable[[Path, Path], None]

    @property
    def is_folder(self) -> bool:
        return not Path(self.relpath).suffix


SOURCES: dict[str, Source] = {
    "freebaseqa": Source(
        "freebaseqa/FreebaseQA-eval.json",
        "https://raw.githubusercontent.com/kelvin-jiang/FreebaseQA/master/FreebaseQA-eval.json",
        _moved(_check_freebaseqa),
    ),
    "wikitext2": Source(
        "wikitext2/wiki.test.raw",
        f"{HF}/Salesforce/wikitext/resolve/main/wikitext-2-raw-v1/test-00000-of-00001.parquet",
        _wikitext_from_parquet,
    ),
    "mmlu": Source(
        "mmlu", "https://people.eecs.berkeley.edu/~hendrycks/data.tar", _from_tar(_mmlu_split, _check_mmlu)
    ),
    # upstream has the whole test split (11,490 stories); the shared copy is a 250-story subset
    "cnn_dailymail": Source(
        "cnn_dailymail/test250.jsonl",
        f"{HF}/abisee/cnn_dailymail/resolve/main/3.0.0/test-00000-of-00001.parquet",
        _cnn_from_parquet,
    ),
    "cnn_dailymail_paper": Source("cnn_dailymail/paper_stories", LAYER_SKIP, _from_tar(_story_bucket)),
    "mt_bench": Source(
        "mt_bench/question.jsonl", f"{FASTCHAT}/question.jsonl", _moved(_check_jsonl("question_id", "turns"))
    ),
    "mt_bench_reference": Source(
        "mt_bench/reference_answer_gpt-4.jsonl",
        f"{FASTCHAT}/reference_answer/gpt-4.jsonl",
        _moved(_check_jsonl("question_id", "choices")),
    ),
    "mt_bench_judge_prompts": Source(
        "mt_bench/judge_prompts.jsonl",
        "https://raw.githubusercontent.com/lm-sys/FastChat/main/fastchat/llm_judge/data/judge_prompts.jsonl",
        _moved(_check_jsonl("name", "prompt_template")),
    ),
    "vicuna80": Source("vicuna80", LAYER_SKIP, _from_tar(_vicuna_table)),
}


def locate(name: str) -> Path:
    """Path of dataset ``name`` (a file or a folder): local copy, cached download, or a fresh download."""
    src = SOURCES[name]
    local = os.environ.get(ENV)
    if local and (Path(local) / src.relpath).exists():
        return Path(local) / src.relpath
    cached = cache_root() / "data" / src.relpath
    if cached.exists():
        return cached
    where = f"{ENV}={local} holds no {src.relpath}" if local else f"{ENV} is not set"
    try:
        _download(src, cached)
    except (OSError, ValueError, tarfile.TarError) as err:
        raise FileNotFoundError(
            f"dataset {name!r}: {where}, and downloading {src.url} failed ({err}). Point {ENV} "
            f"at a folder holding {src.relpath}, or fetch that URL on a machine with internet."
        ) from err
    return cached


def _download(src: Source, target: Path) -> None:
    """Fetch ``src.url`` with a progress bar, build ``target`` from it, and move it into place whole."""
    from tqdm import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.with_name(f"{target.name}.partial-{os.getpid()}")
    download = target.with_name(f"{target.name}.download-{os.getpid()}")
    try:
        with urllib.request.urlopen(src.url, timeout=30) as response, download.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {target.name}") as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
        if src.is_folder:
            work.mkdir()
        try:
            src.build(download, work)
        except (ValueError, KeyError, IndexError, tarfile.TarError) as err:
            raise ValueError(f"the downloaded file is not valid: {err}") from err
        work.rename(target)
    finally:
        download.unlink(missing_ok=True)
        if work.is_dir():
            shutil.rmtree(work)
        else:
            work.unlink(missing_ok=True)


def tasks_dir() -> Path:
    """The shipped lm-eval task YAMLs (inside the wheel, or ``tasks/`` of a source checkout)."""
    package = Path(__file__).resolve().parent.parent
    return package / "tasks" if (package / "tasks").is_dir() else package.parent / "tasks"


WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")  # top-level ` = Title = `; sections are ` = = Section = = `


def split_articles(text: str) -> list[str]:
    """One page per top-level heading, lines joined with newlines (CRLF normalised)."""
    pages: list[list[str]] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if WIKITEXT_TITLE.match(line) or not pages:
            pages.append([])
        pages[-1].append(line)
    return ["\n".join(lines).strip("\n") + "\n" for lines in pages if any(s.strip() for s in lines)]


def wikitext_articles() -> list[str]:
    """The 62 WikiText-2 test articles (raw text, split at the top-level headings)."""
    return split_articles(locate("wikitext2").read_text(encoding="utf-8"))
