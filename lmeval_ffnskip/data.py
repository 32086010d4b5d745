"""Benchmark data: a local copy under ``$FFNSKIP_DATA_DIR``, else a verified download, cached.

``locate("freebaseqa")`` returns the file's path. With ``FFNSKIP_DATA_DIR`` set (tests and CI
point it at ``../shared/data``) the copy there is used; otherwise the file is downloaded once
from its upstream source with a progress bar, checked, and kept under
``$XDG_CACHE_HOME/lmeval-ffnskip/data``. Offline with no copy, the error says what to do.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import cache_root

ENV = "FFNSKIP_DATA_DIR"


def _check_freebaseqa(path: Path) -> None:
    questions = json.loads(path.read_text(encoding="utf-8"))["Questions"]
    if not questions or "Parses" not in questions[0]:
        raise ValueError("no Questions with Parses")


@dataclass(frozen=True)
class Source:
    """One data file: where it lies below the data directory and where it comes from."""

    relpath: str
    url: str
    check: Callable[[Path], None]


SOURCES: dict[str, Source] = {
    "freebaseqa": Source(
        "freebaseqa/FreebaseQA-eval.json",
        "https://raw.githubusercontent.com/kelvin-jiang/FreebaseQA/master/FreebaseQA-eval.json",
        _check_freebaseqa,
    ),
}


def locate(name: str) -> Path:
    """Path of dataset ``name``'s file: local copy, cached download, or a fresh download."""
    src = SOURCES[name]
    local = os.environ.get(ENV)
    if local and (Path(local) / src.relpath).is_file():
        return Path(local) / src.relpath
    cached = cache_root() / "data" / src.relpath
    if cached.is_file():
        return cached
    where = f"{ENV}={local} holds no {src.relpath}" if local else f"{ENV} is not set"
    try:
        _download(src, cached)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"dataset {name!r}: {where}, and downloading {src.url} failed ({err}). Point {ENV} "
            f"at a folder holding {src.relpath}, or fetch that URL on a machine with internet."
        ) from err
    return cached


def _download(src: Source, target: Path) -> None:
    from tqdm import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    try:
        with urllib.request.urlopen(src.url, timeout=30) as response, partial.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {target.name}") as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
        try:
            src.check(partial)
        except (ValueError, KeyError, IndexError) as err:
            raise ValueError(f"the downloaded file is not valid: {err}") from err
        partial.rename(target)
    finally:
        partial.unlink(missing_ok=True)


def tasks_dir() -> Path:
    """The shipped lm-eval task YAMLs (inside the wheel, or ``tasks/`` of a source checkout)."""
    here = Path(__file__).resolve().parent
    return here / "tasks" if (here / "tasks").is_dir() else here.parent / "tasks"
