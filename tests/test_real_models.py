"""The engine on the embedded real checkpoints: SmolLM2-135M (Llama) and Gemma-3-270M."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from lmeval_ffnskip.inputs.checkpoints import resolve
from lmeval_ffnskip.instruments.flops import analytic_decode_flops, decode_flops
from lmeval_ffnskip.skip.engine import attach
from lmeval_ffnskip.skip.hf_compat import cache_keyword
from lmeval_ffnskip.skip.settings import SkipPolicy

TEXT = "The Eiffel Tower is a wrought-iron lattice tower in Paris, named after the engineer who built it."
PROMPTS = [
    "Who was the first president of the United States?",
    "Name three primary colours.",
    "Write a haiku about autumn leaves falling slowly.",
    "What is the boiling point of water?",
    "Translate 'good morning' into French.",
    "Give one reason why the sky looks blue during the day.",
    "What is 12 times 12?",
    "List two planets.",
]


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def real(request):
    path = resolve(request.param)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return request.param, model, AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def test_unreachable_threshold_is_bit_exact(real):
    _, model, tok = real
    ids = tok(TEXT, return_tensors="pt").input_ids
    ref = model(ids).logits
    with attach(model, SkipPolicy(threshold=1.01, skip_prompt=True, warmup=0)) as engine:
        assert torch.equal(model(ids).logits, ref)
    assert engine.stats.never_fired == engine.stats.eligible == ids.numel()


@torch.no_grad()
def test_teacher_forcing_equals_decoding(real):
    name, model, tok = real
    ids = tok(TEXT, return_tensors="pt").input_ids[:, :20]
    policy = SkipPolicy(threshold=0.97, skip_prompt=True, warmup=4, target_skip=0.25)
    with attach(model, policy, record=True) as full:
        logits = model(ids).logits
    with attach(model, policy, record=True) as steps:
        cache = DynamicCache(config=model.config)
        step_logits = [
            model(ids[:, t : t + 1], use_cache=True, **{cache_keyword(model): cache}).logits
            for t in range(20)
        ]
    assert torch.equal(torch.cat(steps.history, dim=1), full.history[0])
    torch.testing.assert_close(torch.cat(step_logits, dim=1), logits, rtol=1e-3, atol=1e-3)
    patterns = {tuple(row) for row in full.history[0][0, 4:].tolist()}
    assert len(patterns) > 1 and full.stats.skipped, name  # adaptive: tokens trigger at different layers


@torch.no_grad()
def test_batch_of_eight_matches_batch_of_one():
    path = resolve("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    policy = SkipPolicy(threshold=0.97, warmup=2, target_skip=0.25)
    gen = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False, "pad_token_id": tok.pad_token_id}
    with attach(model, policy) as engine:
        batch = tok(PROMPTS, return_tensors="pt", padding=True)
        together = model.generate(**batch, **gen)[:, batch.input_ids.shape[1] :]
        singles = [model.generate(**tok(p, return_tensors="pt"), **gen)[0, -12:] for p in PROMPTS]
    assert [tok.decode(t) for t in together] == [tok.decode(t) for t in singles]
    assert 0 < engine.stats.skipped


def test_flops_match_the_analytic_count(real):
    """fvcore's count (with SDPA added) equals the architecture's, past Gemma-3's 512-token window."""
    name, model, _ = real
    for context in (64, 600):
        counted = decode_flops(model, context)
        assert abs(counted.total / analytic_decode_flops(model.config, context) - 1) < 0.01, (name, context)
    # "other" holds at most the rotary embeddings' position x frequency product, which some
    # transformers releases (5.0) compute as a matmul: one multiply-add per frequency
    rotary = sum(
        b.numel() for n, b in model.named_buffers() if n.endswith("inv_freq") and "original" not in n
    )
    assert counted.ffn == sum(counted.ffn_per_layer) and counted.other <= rotary
