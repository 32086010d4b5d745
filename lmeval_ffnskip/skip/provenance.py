"""Provenance of every JSON this package writes: package versions and the source commit
(no torch import, so the regression gate stays light)."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

# the packages whose versions every JSON records (and ``ffnskip check`` compares)
PACKAGES = ("torch", "transformers", "lm_eval", "lmeval-ffnskip")


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (None when it is not installed)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """The versions every JSON this package writes records, so a figure can be reproduced: the
    packages, and the commit of this package's source when it runs from a git checkout."""
    return {**{name: package_version(name) for name in PACKAGES}, "lmeval-ffnskip commit": source_commit()}


@functools.cache
def source_commit() -> str | None:
    """The git commit of this package's source (``+modified`` when its files differ from it), or
    None where the package does not sit in a checkout of its own repository."""
    here = Path(__file__).resolve().parent.parent
    if not (here.parent / ".git").exists():
        return None

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        modified = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+modified" if modified else commit
