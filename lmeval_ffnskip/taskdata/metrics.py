"""Deterministic text metrics for generative tasks: ROUGE and the degeneration rate.

The degeneration rate is the share of repeated word n-grams in an answer (0 for fresh text,
towards 1 as generation collapses into loops): the paper's "token collapse", measurable with
no judge and no reference.
"""

from __future__ import annotations

from functools import cache

from rouge_score import rouge_scorer


@cache
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures (x100, stemmed), as summarization papers report them."""
    scores = _scorer().score(reference, prediction)
    return {name: 100 * score.fmeasure for name, score in scores.items()}


def repeated_ngram_rate(text: str, n: int = 4) -> float:
    """1 - distinct / total word n-grams; 0 for texts shorter than n words."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def mean_defined(values: list[float | None]) -> float:
    """lm-eval aggregation: the mean over documents that have the metric (None: not defined)."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else float("nan")
