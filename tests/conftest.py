"""Shared fixtures: tiny random models of every supported architecture, and the real SmolLM2."""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")
DATA_DIR = os.environ.get(
    "FFNSKIP_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
)


def task_utils(task: str) -> ModuleType:
    """A task folder's ``utils.py`` as its own module (each task folder has one)."""
    from lmeval_ffnskip.data import tasks_dir

    spec = importlib.util.spec_from_file_location(f"{task}_utils", tasks_dir() / task / "utils.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tiny_model(model_type: str, n_layers: int = 8, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised decoder small enough to run in milliseconds."""
    extra = {"sliding_window": 16} if model_type == "gemma3_text" else {}
    config = AutoConfig.for_model(
        model_type,
        num_hidden_layers=n_layers,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=97,
        max_position_embeddings=256,
        initializer_range=0.25,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        **extra,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.fixture(params=ARCHS)
def arch_model(request: pytest.FixtureRequest) -> torch.nn.Module:
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def smollm2() -> tuple[torch.nn.Module, object]:
    from lmeval_ffnskip.checkpoints import resolve

    path = resolve("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), tok
