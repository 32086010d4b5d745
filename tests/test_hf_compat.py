"""Reading transformers' calling conventions: the KV cache under any name, loud failures when a
release passes it in a way we cannot read, and eligible tokens counted from what lm-eval generated."""

from __future__ import annotations

import dataclasses
import subprocess
import warnings
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from transformers import DynamicCache

import lmeval_ffnskip
from lmeval_ffnskip.skip import hf_compat
from lmeval_ffnskip.skip.engine import attach, checked_generate, generate_fixed
from lmeval_ffnskip.skip.hf_compat import (
    IncompatibleTransformers,
    cache_keyword,
    find_cache,
    output_cache,
)
from lmeval_ffnskip.skip.provenance import versions
from lmeval_ffnskip.skip.settings import SkipPolicy


def test_cache_is_found_by_either_keyword_or_by_type():
    cache = DynamicCache()
    assert find_cache((), {"cache": cache}) is cache
    assert find_cache((), {"past_key_values": cache}) is cache
    assert find_cache((), {"kv_store": cache}) is cache  # a future rename is still found by type
    assert find_cache((None, cache), {}) is cache
    assert find_cache((), {"use_cache": True, "cache": None}) is None  # a prompt pass without one
    assert find_cache((), {"cache_position": torch.arange(3)}) is None  # before 5.4: not a cache
    with pytest.raises(IncompatibleTransformers, match=r"past_key_values= of type tuple.*transformers 5"):
        find_cache((), {"past_key_values": ((torch.zeros(1),),)})
    with pytest.raises(IncompatibleTransformers, match="kv_cache= of type list"):
        find_cache((), {"kv_cache": [torch.zeros(1)]})


def test_our_own_calls_use_the_installed_keyword_without_deprecation_warnings():
    model = tiny_model("llama", n_layers=2)
    keyword = cache_keyword(model)
    assert keyword in ("cache", "past_key_values")
    ids = torch.randint(3, 97, (1, 6))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model(ids[:, :5], use_cache=True, **{keyword: DynamicCache(config=model.config)})
        model(ids[:, 5:], use_cache=True, **{keyword: output_cache(out)})
    assert [w for w in caught if issubclass(w.category, FutureWarning)] == []
    assert output_cache(out).get_seq_length() == 6


@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_hidden_cache_is_an_error_not_dense_results(monkeypatch, batch_size):
    """What transformers 5.24 did to the engine: the cache not found, every step read as a prompt."""
    model = tiny_model("llama")
    ids = torch.randint(3, 97, (batch_size, 7))
    mask = torch.ones_like(ids)
    mask[1:, :3] = 0  # left padding in the batch
    batch = {"input_ids": ids, "attention_mask": mask}
    with attach(model, SkipPolicy(warmup=2)) as engine:
        generate_fixed(model, batch, 6)  # read correctly: no error
    assert engine.stats.eligible == batch_size * (6 - 1 - 2)
    monkeypatch.setattr(hf_compat, "find_cache", lambda args, kwargs: None)
    with attach(model, SkipPolicy(warmup=2)), pytest.raises(IncompatibleTransformers) as err:
        generate_fixed(model, batch, 6)
    version = hf_compat.package_version("transformers")
    # caught after generate (batch 1 without a mask) or at step 1 (a mask betrays the cache)
    message = str(err.value)
    assert f"transformers {version}" in message
    assert "0 decoding passes" in message or "attention mask over 8 positions, but 0 cached + 1" in message


@pytest.mark.parametrize("dtype", [torch.long, torch.bool, torch.float32])
def test_a_pass_is_read_from_the_padding_mask_of_any_dtype(dtype):
    """Positions count a row's real tokens; padding is not real; the same at prefill and decode."""
    cache = DynamicCache()
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]).to(dtype)
    prompt = hf_compat.PassTokens.read((), {"input_ids": torch.zeros(2, 5), "attention_mask": mask})
    assert (prompt.batch, prompt.length, prompt.past, prompt.before) == (2, 5, 0, [0, 0])
    assert prompt.real == [False, False, True, True, True] + [True] * 5
    assert prompt.pos == [-1, -1, 0, 1, 2, 0, 1, 2, 3, 4]
    cache.update(torch.zeros(2, 1, 5, 4), torch.zeros(2, 1, 5, 4), 0)  # five positions cached
    grown = torch.cat([mask, torch.ones(2, 1, dtype=dtype)], 1)
    step = hf_compat.PassTokens.read(
        (), {"input_ids": torch.zeros(2, 1), "attention_mask": grown, "cache": cache}
    )
    assert (step.past, step.real, step.pos, step.before) == (5, [True, True], [3, 5], [3, 5])
    bare = hf_compat.PassTokens.read((), {"input_ids": torch.zeros(2, 1), "cache": cache})
    assert (bare.real, bare.pos, bare.before) == ([True, True], [5, 5], [5, 5])  # no mask: no padding


def test_chunked_prefill_is_refused_by_name():
    model = tiny_model("llama")
    ids = torch.randint(3, 97, (1, 10))
    keyword = cache_keyword(model)
    with attach(model, SkipPolicy(warmup=0)), torch.no_grad():
        cache = output_cache(model(ids[:, :6], use_cache=True))
        with pytest.raises(NotImplementedError, match="chunked prefill"):
            model(ids[:, 6:], use_cache=True, **{keyword: cache})
    with attach(model, SkipPolicy(warmup=0, skip_prompt=True)) as engine, torch.no_grad():
        cache = output_cache(model(ids[:, :6], use_cache=True))
        model(ids[:, 6:], use_cache=True, **{keyword: cache})  # positions are known: allowed
    assert engine.stats.eligible == 10


def _requests(prompts: list[str], max_tokens: list[int]) -> list:
    from lm_eval.api.instance import Instance

    return [
        Instance(
            "generate_until",
            doc={},
            arguments=(p, {"until": ["<never in a story>"], "max_gen_toks": n, "do_sample": False}),
            idx=0,
        )
        for p, n in zip(prompts, max_tokens, strict=True)
    ]


@pytest.mark.real
@pytest.mark.parametrize("batch_size", [1, 3])
def test_eligible_tokens_are_generated_tokens_after_warmup_through_hflm(batch_size):
    """Through lm-eval's own generation path (HFLM.generate_until -> _model_generate): every
    request's eligible tokens are its generated tokens (counted from the response text) minus the
    warm-up minus the last token (never fed back). Batch 3 is left-padded (prompts differ in length)."""
    from lmeval_ffnskip.harness.lm import FFNSkipLM

    warmup = 4
    lm = FFNSkipLM(device="cpu", batch_size=batch_size, warmup=warmup, target_skip=0.25, threshold=0.5)
    prompts = ["Once upon a time", "The history of the city of Rome begins", "My favourite recipe is"]
    lengths = [12, 12, 12] if batch_size > 1 else [9, 12, 16]  # one batch needs one gen_kwargs
    responses = lm.generate_until(_requests(prompts, lengths))
    generated = [len(lm.tokenizer(r, add_special_tokens=False).input_ids) for r in responses]
    assert generated == lengths
    stats = lm.skip_stats
    assert stats.eligible == sum(n - 1 - warmup for n in generated)
    assert stats.skipped == stats.eligible * lm.engine.layout.k  # threshold 0.5 fires on every token


def test_prompt_lengths_the_engine_misread_and_beam_search_are_refused(monkeypatch):
    model = tiny_model("llama")
    ids = torch.randint(3, 97, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    beams = partial(model.generate, input_ids=ids, attention_mask=mask, max_new_tokens=3, num_beams=2)
    with (
        attach(model, SkipPolicy(warmup=1)) as engine,
        pytest.raises(NotImplementedError, match="beam search"),
    ):
        checked_generate(engine, mask, beams)
    # an engine that reads the padding wrong (every position real) is caught after the call
    real = hf_compat.PassTokens.read

    def unpadded(args: tuple, kwargs: dict) -> hf_compat.PassTokens:
        tokens = real(args, kwargs)
        return dataclasses.replace(tokens, real=[True] * len(tokens.real))

    monkeypatch.setattr(hf_compat.PassTokens, "read", staticmethod(unpadded))
    with (
        attach(model, SkipPolicy(warmup=1)),
        pytest.raises(IncompatibleTransformers, match=r"\[7, 7\].*\[7, 5\]"),
    ):
        generate_fixed(model, {"input_ids": ids, "attention_mask": mask}, 4)


def test_every_json_names_the_source_commit_it_ran():
    """From a git checkout the recorded commit is HEAD's (``+modified`` when the package's files
    differ from it); installed elsewhere, None."""
    root = Path(lmeval_ffnskip.__file__).resolve().parent.parent
    commit = versions()["lmeval-ffnskip commit"]
    if not (root / ".git").exists():
        assert commit is None
        return
    run = partial(subprocess.run, cwd=root, capture_output=True, text=True, check=True)
    head = run(["git", "rev-parse", "HEAD"]).stdout.strip()
    modified = run(["git", "status", "--porcelain", "--untracked-files=no", "--", "lmeval_ffnskip"]).stdout
    assert commit == (f"{head}+modified" if modified.strip() else head)
