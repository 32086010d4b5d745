"""MT-Bench questions with the GPT-4 reference answers (math, reasoning, coding) merged in."""

from __future__ import annotations

from typing import Any

import datasets

from lmeval_ffnskip.taskdata.conversation import decode_answers, encode_turns
from lmeval_ffnskip.taskdata.data import locate
from lmeval_ffnskip.taskdata.jsonfiles import read_jsonl
from lmeval_ffnskip.taskdata.metrics import mean_defined, repeated_ngram_rate, rouge

__all__ = ["doc_to_target", "doc_to_text", "load", "mean_defined", "process_results"]


def load(**kwargs: Any) -> datasets.DatasetDict:
    """The 80 questions; ``reference`` holds GPT-4's answer per turn where MT-Bench has one, else []."""
    references = {
        r["question_id"]: r["choices"][0]["turns"] for r in read_jsonl(locate("mt_bench_reference"))
    }
    rows = [
        {
            "question_id": q["question_id"],
            "category": q["category"],
            "turns": q["turns"],
            "reference": references.get(q["question_id"], []),
        }
        for q in read_jsonl(locate("mt_bench"))
    ]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def doc_to_text(doc: dict) -> str:
    return encode_turns(doc["turns"])


def doc_to_target(doc: dict) -> str:
    return "\n\n".join(doc["reference"])


def process_results(doc: dict, results: list[str]) -> dict[str, float | None]:
    """Repeated 4-gram rate over both answers; ROUGE-L against the reference answers if any."""
    answers = decode_answers(results[0])
    rates = [repeated_ngram_rate(a) for a in answers]
    pairs = list(zip(answers, doc["reference"], strict=False))
    return {
        "repeated_4gram_rate": sum(rates) / len(rates),
        "rougeL_reference": sum(rouge(a, r)["rougeL"] for a, r in pairs) / len(pairs) if pairs else None,
    }
