"""JSON files as every floor reads and writes them: a results or cache JSON written whole or not at
all, and JSON-lines records read with the place of a corrupt line."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file (blank lines skipped); a corrupt line names its place."""
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not JSON ({err.msg})") from err
    return records


def write_json(path: Path, payload: object, default: Callable[[object], object] | None = None) -> None:
    """``payload`` as ``path``, written whole or not at all (a reader never sees half a file;
    the temporary name is per process); ``default`` as ``json.dumps`` takes it."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, default=default))
    os.replace(tmp, path)
