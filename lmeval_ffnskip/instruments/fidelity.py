"""Teacher-forced fidelity to the dense model: how much of the full model a skip policy keeps,
measured without compounding errors.

One forward pass over a fixed token sequence with ``skip_prompt`` decides per position exactly
what token-by-token decoding of that sequence decides (tested in test_engine), so each policy
sees the same inputs as the dense model. Per policy: the share of scored positions whose top-1
next token equals the dense model's, and the perplexity of the sequence. Sequences are WikiText-2
text or the dense model's own greedy continuations of WikiText-2 prompts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..skip.engine import attach, generate_fixed
from ..skip.naming import DENSE, config_name
from ..skip.settings import SkipPolicy
from .options import FidelityOptions


@dataclass(frozen=True)
class Fidelity:
    """One policy's teacher-forced agreement with the dense model."""

    name: str
    top1_agreement: float  # share of scored positions with the dense model's argmax
    perplexity: float
    skip_ratio: float  # achieved over the scored (eligible) positions


@torch.no_grad()
def _logits(model: nn.Module, ids: torch.Tensor, policy: SkipPolicy | None) -> tuple[torch.Tensor, float]:
    if policy is None:
        return model(ids).logits.float(), 0.0
    with attach(model, policy) as engine:
        logits = model(ids).logits.float()
    return logits, engine.stats.summary()["skip_ratio_eligible"] or 0.0


def measure(
    model: nn.Module, sequences: torch.Tensor, policies: dict[str, SkipPolicy], warmup: int
) -> list[Fidelity]:
    """Dense first, then each policy, over ``sequences`` [batch, length] of equal length.

    Positions from ``warmup`` on are scored (the next-token prediction of each); every policy is
    run with ``skip_prompt`` and that warm-up, so exactly the scored positions are eligible
    (``skipdecode``'s schedule spans them, so its mean is its per-token count).
    """
    targets = sequences[:, warmup + 1 :]
    dense, _ = _logits(model, sequences, None)
    dense = dense[:, warmup:-1]
    reference = dense.argmax(-1)

    def score(name: str, logits: torch.Tensor, ratio: float) -> Fidelity:
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        agree = (logits.argmax(-1) == reference).float().mean()
        return Fidelity(name, float(agree), math.exp(float(nll)), ratio)

    rows = [score(DENSE, dense, 0.0)]
    for name, policy in policies.items():
        forced = dataclasses.replace(policy, skip_prompt=True, warmup=warmup, horizon=targets.shape[1])
        logits, ratio = _logits(model, sequences, forced)
        rows.append(score(name, logits[:, warmup:-1], ratio))
    return rows


def continuations(model: nn.Module, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The dense model's greedy continuations (EOS suppressed), prompt first: [batch, prompt + new]."""
    return generate_fixed(
        model, {"input_ids": prompts, "attention_mask": torch.ones_like(prompts)}, new_tokens
    )


def wikitext_sequences(tokenizer: object, count: int, length: int) -> torch.Tensor:
    """The first ``length`` tokens of the first ``count`` WikiText-2 test articles that long."""
    from ..taskdata.data import wikitext_articles

    ids = [tokenizer.encode(page) for page in wikitext_articles()]
    rows = [seq[:length] for seq in ids if len(seq) >= length][:count]
    if len(rows) < count:
        raise ValueError(f"only {len(rows)} WikiText-2 articles have {length} tokens; lower --length")
    return torch.tensor(rows)


def run_fidelity(options: FidelityOptions) -> dict[str, Any]:
    """``ffnskip fidelity``: teacher-forced top-1 agreement with dense and perplexity of every
    method x target over WikiText-2 text or the dense model's own continuations (``source``),
    with the model on the options' device."""
    options.check()  # before anything loads
    from ..inputs.checkpoints import load
    from ..skip.engine import make_engine
    from ..skip.provenance import versions
    from .calibrate import with_calibration

    model, tokenizer = load(options.pretrained, options.device)
    if options.source == "wikitext":
        ids = wikitext_sequences(tokenizer, options.sequences, options.length).to(model.device)
    else:
        prompts = wikitext_sequences(tokenizer, options.sequences, options.warmup).to(model.device)
        ids = continuations(model, prompts, options.length - options.warmup)
    common = {"threshold": options.threshold, "cold_start": options.cold_start, "cold_end": options.cold_end}
    policies = {
        config_name(m, float(t)): with_calibration(
            SkipPolicy(method=m, target_skip=float(t), **common), model, tokenizer
        )
        for m in options.methods
        for t in options.targets
    }
    for policy in policies.values():
        make_engine(model, policy)  # a bad combination fails here, not mid-run
    rows = measure(model, ids, policies, options.warmup)
    return {
        "model": options.pretrained,
        "device": options.device,
        "source": options.source,
        "shape": list(ids.shape),
        "warmup": options.warmup,
        "versions": versions(),
        "rows": [dataclasses.asdict(r) for r in rows],
    }
