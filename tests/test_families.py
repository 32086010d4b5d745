"""Every architecture in ``adapters.ARCHITECTURES`` (both layer forms of those whose config picks
parallel or sequential), on a tiny random model built from transformers' own config class
(nothing downloaded): skipping off is the stock model bit for bit; a skipped block runs none of
its modules (router and experts included) in exactly the layers the rule names; the similarity
the rule reads is cos(h, h + scale * out_norm(block(in_norm(h)))), in a parallel layer
cos(h + attention, h + attention + block), the one calibration measures with plain hooks on the
stock model; and one teacher-forced pass (loglikelihood requests) decides as decoding does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import alone_and_batched, forced_and_stepwise
from transformers import DynamicCache

from lmeval_ffnskip.instruments.shapes import tiny_batches, tiny_model
from lmeval_ffnskip.skip.adapters import ARCHITECTURES, REFUSED, check_model_type, ffn_sites
from lmeval_ffnskip.skip.compiled import gated_activation, op_refusal
from lmeval_ffnskip.skip.decode import CompiledDecoder, check_config
from lmeval_ffnskip.skip.engine import attach, generate_fixed
from lmeval_ffnskip.skip.hf_compat import cache_keyword
from lmeval_ffnskip.skip.settings import SkipPolicy

# case -> (model_type, config beyond the tiny widths): every family, and the other layer form of
# those whose config picks parallel or sequential (their tiny defaults are parallel)
CASES: dict[str, tuple[str, dict[str, object]]] = {
    **{model_type: (model_type, {}) for model_type in ARCHITECTURES},
    "gpt_neox-sequential": ("gpt_neox", {"use_parallel_residual": False}),
    "stablelm-parallel": ("stablelm", {"use_parallel_residual": True}),  # its tiny default: sequential
    "falcon-sequential": ("falcon", {"parallel_attn": False}),
    "falcon-two-norms": ("falcon", {"new_decoder_architecture": True}),  # Falcon-40B's ln_attn, ln_mlp
}
FAMILIES = sorted(CASES)
PARALLEL = ["cohere", "falcon", "falcon-two-norms", "gpt_neox", "gptj", "phi", "stablelm-parallel"]
N_LAYERS, NEW = 6, 6


def _model(case: str) -> torch.nn.Module:
    model_type, config = CASES[case]
    if not _known(model_type):  # a family newer than this transformers (the oldest tested)
        pytest.skip(f"this transformers has no model_type={model_type}")
    return tiny_model(model_type, n_layers=N_LAYERS, **config)


def test_the_parallel_cases_are_the_parallel_layers() -> None:
    parallel = [case for case in FAMILIES if ffn_sites(_model(case))[1][0].parallel is not None]
    assert parallel == PARALLEL


def _known(model_type: str) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return model_type in CONFIG_MAPPING_NAMES


def _block_calls(model: torch.nn.Module) -> list[int]:
    """Per layer, how many times its FFN block ran: calls of the busiest of the block's own
    modules (the router, the first projection: each block call reaches them once)."""
    calls: list[dict[str, int]] = []
    for site in ffn_sites(model)[1]:
        counts: dict[str, int] = {}
        for name, child in site.mlp.named_children():
            if any(True for _ in child.parameters()):
                counts[name] = 0
                child.register_forward_pre_hook(lambda m, a, c=counts, n=name: c.__setitem__(n, c[n] + 1))
        calls.append(counts)
    return calls  # read later with max(counts.values())


@pytest.mark.parametrize("model_type", FAMILIES)
@torch.no_grad()
def test_skipping_off_is_the_stock_model(model_type: str) -> None:
    model = _model(model_type)
    batch = tiny_batches()[1]
    want = generate_fixed(model, batch, NEW)
    logits = model(**batch).logits
    for policy in (SkipPolicy(method="dense"), SkipPolicy(threshold=1.5, warmup=0)):
        with attach(model, policy):
            assert torch.equal(model(**batch).logits, logits)
            assert torch.equal(generate_fixed(model, batch, NEW), want)


@pytest.mark.parametrize("method", ["static", "ffnskip"])
@pytest.mark.parametrize("model_type", FAMILIES)
@torch.no_grad()
def test_a_skipped_block_runs_none_of_its_modules(model_type: str, method: str) -> None:
    model = _model(model_type)
    calls = _block_calls(model)
    batch = tiny_batches()[0]
    # ffnskip fires at its first check (threshold -1), static skips its drawn layers
    policy = SkipPolicy(method=method, target_skip=0.34, warmup=1, threshold=-1.0, seed=2)
    with attach(model, policy, record=True) as engine:
        generate_fixed(model, batch, NEW)
    skipped = torch.stack([step.reshape(-1, N_LAYERS)[-1] for step in engine.history])  # [passes, layers]
    passes = len(engine.history)
    ran = [max(counts.values()) for counts in calls]
    assert ran == [passes - int(skipped[:, layer].sum()) for layer in range(N_LAYERS)]
    assert engine.stats.skipped == int(skipped.sum()) > 0


@pytest.mark.parametrize("model_type", FAMILIES)
@torch.no_grad()
def test_rows_that_skip_beside_rows_that_run(model_type: str) -> None:
    """In a batch where some rows skip a block and others run it, the rows that run it are fed
    to the block alone (as [rows, 1, d]: an expert block takes nothing else) and each row decodes
    as it does alone."""
    model = _model(model_type)
    prompts = [torch.randint(3, 97, (n,), generator=torch.Generator().manual_seed(n)) for n in (3, 7, 5)]
    policy = SkipPolicy(method="random", target_skip=0.34, warmup=1, seed=4)
    with attach(model, policy, record=True) as engine:
        singles, together = alone_and_batched(model, prompts, NEW)
    batched = [step[:, -1] for step in engine.history if step.shape[:2] == (3, 1)]  # [rows, layers]
    assert any((step.any(0) & ~step.all(0)).any() for step in batched)  # a block some rows skipped
    assert torch.equal(together, singles)


def _layer_similarity(model: torch.nn.Module, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """[positions] cos(h, layer output) at ``layer`` over ``ids`` (one stock forward pass), where
    h is what the FFN block's first module reads, or in a parallel layer the layer's input plus
    attention's output: the layer's output is h plus the block's contribution, whatever the
    family's norms and scale."""
    seen: dict[str, torch.Tensor] = {}
    site = ffn_sites(model)[1][layer]
    hooks = [site.layer.register_forward_hook(lambda m, a, out: seen.__setitem__("out", _hidden(out)))]
    if site.parallel is None:
        hooks.append(site.entry.register_forward_pre_hook(lambda m, a: seen.__setitem__("h", a[0])))
    else:
        hooks += [
            site.layer.register_forward_pre_hook(
                lambda m, a, kw: seen.__setitem__("input", a[0] if a else kw["hidden_states"]),
                with_kwargs=True,
            ),
            site.attention.register_forward_hook(
                lambda m, a, out: seen.__setitem__("h", seen["input"] + out[0])
            ),
        ]
    try:
        model(input_ids=ids)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cosine_similarity(seen["h"][0].double(), seen["out"][0].double(), dim=-1)


def _hidden(out: torch.Tensor | tuple) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("model_type", FAMILIES)
@torch.no_grad()
def test_the_rule_reads_the_blocks_contribution_to_the_residual_stream(model_type: str) -> None:
    """ffnskip's first check (layer 1: nothing before it is skipped), decoding given tokens at a
    threshold between two of their similarities, fires exactly where cos(h, layer output) of the
    stock model over the same tokens reaches it."""
    model = _model(model_type)
    ids = tiny_batches()[0]["input_ids"]
    first, prompt = 1, ids.shape[1]
    tokens = generate_fixed(model, {"input_ids": ids}, NEW)
    stock = _layer_similarity(model, tokens, first)[prompt : prompt + NEW - 1]  # the decoding steps'
    ordered = stock.sort().values
    threshold = float(ordered[1] + ordered[2]) / 2  # some reach it, some do not
    policy = SkipPolicy(
        method="ffnskip", target_skip=0.2, warmup=0, cold_start=1, cold_end=1, threshold=threshold
    )
    cache = {cache_keyword(model): DynamicCache(config=model.config)}
    with attach(model, policy, record=True) as engine:
        model(input_ids=tokens[:, :prompt], use_cache=True, **cache)
        for position in range(prompt, prompt + NEW - 1):  # each step fed the token given
            model(input_ids=tokens[:, position : position + 1], use_cache=True, **cache)
    fired = [bool(step.reshape(-1, N_LAYERS)[-1, first + 1]) for step in engine.history[1:]]
    assert fired == (stock >= threshold).tolist()


@pytest.mark.parametrize("model_type", FAMILIES)
@torch.no_grad()
def test_one_teacher_forced_pass_decides_as_decoding(model_type: str) -> None:
    """A loglikelihood request is one forward pass; with ``skip_prompt`` it skips exactly the
    blocks token-by-token decoding of the same tokens skips, and gives the same logits."""
    model = _model(model_type)
    ids = tiny_batches()[0]["input_ids"]
    policy = SkipPolicy(method="ffnskip", skip_prompt=True, warmup=2, target_skip=0.34, threshold=-1.0)
    (forced, full), (stepwise, steps) = forced_and_stepwise(model, policy, ids)
    assert torch.equal(torch.cat(stepwise.history, dim=1), forced.history[0])
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-4)
    assert forced.stats.skipped > 0


@pytest.mark.parametrize("model_type", ["falcon", "gptj", "gpt_neox", "llama"])
@torch.no_grad()
def test_a_dropped_layer_hands_on_its_input_as_the_layer_would(model_type: str) -> None:
    """shortgpt's dropped layers return their input in the layer's own output form (Falcon's, and
    GPT-J's before transformers 5.25, return a tuple): the logits are a stock pass with those layers' outputs
    replaced by their inputs."""
    model = _model(model_type)
    batch = tiny_batches()[1]
    influence = tuple(0.5 - 0.01 * i for i in range(N_LAYERS))  # the deepest layers matter least
    with attach(model, SkipPolicy(method="shortgpt", target_skip=0.4, influence=influence)) as engine:
        logits = model(**batch).logits
    dropped = engine.plan.order
    layers = [site.layer for site in ffn_sites(model)[1]]

    def identity(m: torch.nn.Module, args: tuple, kwargs: dict, out: object) -> object:
        h = args[0] if args else kwargs["hidden_states"]
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handles = [layers[i].register_forward_hook(identity, with_kwargs=True) for i in dropped]
    try:
        assert len(dropped) > 0 and torch.equal(logits, model(**batch).logits)
    finally:
        for handle in handles:
            handle.remove()


def test_every_refused_architecture_says_why() -> None:
    for model_type, reason in REFUSED.items():
        with pytest.raises(NotImplementedError, match=rf"model_type='{model_type}': {reason[:30]}"):
            check_model_type(model_type)
    assert not set(REFUSED) & set(ARCHITECTURES)


@pytest.mark.parametrize("model_type", PARALLEL)
def test_the_compiled_path_refuses_parallel_layers_by_name(model_type: str) -> None:
    """Its step measures cos(h, h + block) at the block's input, not a parallel layer's
    similarity: refused before any weights load, and by the decoder on a loaded model."""
    model = _model(model_type)
    with pytest.raises(ValueError, match="run attention and the FFN block in parallel"):
        check_config(model.config)
    with attach(model, SkipPolicy(method="static", target_skip=0.34)) as engine:
        with pytest.raises(NotImplementedError, match="in parallel"):
            CompiledDecoder(model, engine)


def test_router_logits_asked_for_are_refused() -> None:
    model = tiny_model("qwen3_moe", n_layers=2)
    model.config.output_router_logits = True
    with pytest.raises(NotImplementedError, match="output_router_logits=True"):
        ffn_sites(model)


def test_readme_lists_what_the_code_supports_and_refuses() -> None:
    """README's supported table and refusal list name exactly the code's model types."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("### Supported models", 1)[1].split("\n### ", 1)[0]
    table, refused = section.split("Refused by name", 1)
    rows = re.findall(r"^\| [^|]*\| ([^|]*)\| ([^|]*)\|", table, flags=re.MULTILINE)[1:]  # past the header
    named = {t: compiled for types, compiled in rows for t in re.findall(r"`([a-z0-9_]+)`", types)}
    assert set(named) == set(ARCHITECTURES)
    for model_type, compiled in named.items():  # the compiled path's column: what it runs
        model = _model(model_type)
        if compiled.strip().startswith("yes"):
            assert op_refusal(model.config) is None
            gated_activation(ffn_sites(model)[1][-1])
        else:
            assert op_refusal(model.config) is not None
    assert set(re.findall(r"`([a-z0-9_]+)`", refused.split("; any other", 1)[0])) == set(REFUSED)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["olmo2", "gpt_neox", "qwen3_moe"])
def test_plain_lm_eval_runs_a_saved_tiny_checkpoint(tmp_path, model_type: str) -> None:
    """``lm_eval --model ffnskip`` on a tiny random checkpoint saved to a folder (a dense family
    without an input norm, a parallel one, a mixture of experts): it runs, and skips."""
    import json
    import os
    import subprocess

    from conftest import DATA_DIR
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from lmeval_ffnskip.inputs.checkpoints import resolve
    from lmeval_ffnskip.instruments.shapes import TINY_EXTRA

    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    widths = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}
    config = AutoConfig.for_model(
        model_type, num_hidden_layers=6, head_dim=16, vocab_size=len(tokenizer), **widths,
        **TINY_EXTRA.get(model_type, {}),
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    args = f"pretrained={tmp_path / 'model'},target_skip=0.34,warmup=0,threshold=-1"
    cmd = ["lm_eval", "--model", "ffnskip", "--model_args", args, "--tasks", "freebaseqa", "--limit", "2",
           "--device", "cpu", "--output_path", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "FFNSKIP_DATA_DIR": DATA_DIR}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (results,) = (tmp_path / "out").rglob("results_*.json")
    stats = json.loads(results.read_text())["config"]["ffnskip"]["stats"]
    assert stats["skipped"] > 0 and stats["skip_ratio_eligible"] == pytest.approx(2 / 6)
