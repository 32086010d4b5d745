"""Shared fixtures: tiny random models of every supported architecture, and the real SmolLM2."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from lmeval_ffnskip.instruments.shapes import tiny_model as tiny_model  # the tests import it from here
from lmeval_ffnskip.skip.hf_compat import cache_keyword

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")
DATA_DIR = os.environ.get(
    "FFNSKIP_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
)


def task_utils(task: str) -> ModuleType:
    """A task folder's ``utils.py`` as its own module (each task folder has one)."""
    from lmeval_ffnskip.taskdata.data import tasks_dir

    spec = importlib.util.spec_from_file_location(f"{task}_utils", tasks_dir() / task / "utils.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def alone_and_batched(model: torch.nn.Module, prompts: list[torch.Tensor], new_tokens: int) -> tuple:
    """Greedy continuations of each prompt alone, stacked, and inside one left-padded batch."""
    gen = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}
    width = max(len(p) for p in prompts)
    batch = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts])
    mask = (torch.arange(width) >= width - torch.tensor([len(p) for p in prompts])[:, None]).long()
    together = model.generate(batch, attention_mask=mask, **gen)[:, width:]
    singles = torch.stack([model.generate(p[None], **gen)[0, len(p) :] for p in prompts])
    return singles, together


@torch.no_grad()
def forced_and_stepwise(model: torch.nn.Module, policy: object, ids: torch.Tensor) -> tuple:
    """(engine, logits) of one forward pass over ``ids`` and of token-by-token decoding of them,
    each with ``policy`` attached and decisions recorded."""
    from lmeval_ffnskip.skip.engine import attach

    with attach(model, policy, record=True) as forced:
        full = model(ids).logits
    with attach(model, policy, record=True) as stepwise:
        cache = DynamicCache(config=model.config)
        steps = [
            model(ids[:, t : t + 1], use_cache=True, **{cache_keyword(model): cache}).logits
            for t in range(ids.shape[1])
        ]
    return (forced, full), (stepwise, torch.cat(steps, dim=1))


@pytest.fixture(params=ARCHS)
def arch_model(request: pytest.FixtureRequest) -> torch.nn.Module:
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def smollm2() -> tuple[torch.nn.Module, object]:
    from lmeval_ffnskip.inputs.checkpoints import resolve

    path = resolve("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), tok


SWEEP = """
tasks: [freebaseqa]
methods: [ffnskip, static]
targets: [0.25]
model_args: {warmup: 2}
limit: 3
batch_size: 3
flops: {context: 32, targets: [0.25], new_tokens: 4}
bench: {batch_sizes: [1], new_tokens: 4, reps: 1, lockstep: true, targets: [0.25], methods: [ffnskip, static]}
fidelity: {methods: [ffnskip, static, random], targets: [0.25], sequences: 2, length: 40, warmup: 16}
"""


@pytest.fixture(scope="session")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished real sweep (read-only for tests): dense, ffnskip-0.25 and static-0.25 on
    SmolLM2, FreebaseQA limit 3, with FLOPs, a (timing-noise sized) bench and teacher-forced
    fidelity on 2 WikiText-2 sequences."""
    from lmeval_ffnskip.cli import main

    root = tmp_path_factory.mktemp("sweep")
    (root / "sweep.yaml").write_text(SWEEP)
    os.environ.setdefault("FFNSKIP_DATA_DIR", DATA_DIR)
    assert main(["sweep", str(root / "sweep.yaml"), "--out", str(root / "out")]) == 0
    return root / "out"


@pytest.fixture
def browser_tab() -> Iterator[object]:
    """A headless Chromium tab with a 1280 x 900 window (skipped without chromium, failed when
    FFNSKIP_REQUIRE_BROWSER is set, as in .ci/run)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("FFNSKIP_REQUIRE_BROWSER"):
            pytest.fail("FFNSKIP_REQUIRE_BROWSER is set but no chromium is installed")
        pytest.skip("no chromium (Debian: apt-get install chromium); .ci/run installs it")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as pw:
        args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        browser = pw.chromium.launch(executable_path=chromium, args=args)
        yield browser.new_page(viewport={"width": 1280, "height": 900})
        browser.close()


@pytest.fixture
def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading any model's weights, or finding an embedded one (its first use dequantises it),
    fails the test."""
    from transformers import AutoModelForCausalLM

    from lmeval_ffnskip.inputs import checkpoints

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights were loaded")

    for name in ("load", "resolve"):
        monkeypatch.setattr(checkpoints, name, refuse)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def refused_in_one_line(
    argv: list[str], expected: str | tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> str:
    """``ffnskip ARGV`` exits 2 with one stderr line, ``ffnskip <subcommand>: ...``, holding
    ``expected`` (each of the facts, where several); returns the line."""
    from lmeval_ffnskip.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    facts = (expected,) if isinstance(expected, str) else expected
    assert err.count("\n") == 1 and err.startswith(f"ffnskip {argv[0]}: "), err
    assert all(fact in err for fact in facts), err
    return err
