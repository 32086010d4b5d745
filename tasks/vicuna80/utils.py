"""Vicuna-80 questions with the GPT-3.5 answers the paper judged against."""

from __future__ import annotations

from typing import Any

import datasets

from lmeval_ffnskip.taskdata.conversation import decode_answers, encode_turns
from lmeval_ffnskip.taskdata.data import locate
from lmeval_ffnskip.taskdata.jsonfiles import read_jsonl
from lmeval_ffnskip.taskdata.metrics import repeated_ngram_rate, rouge


def load(**kwargs: Any) -> datasets.DatasetDict:
    """The 80 questions (id, category, text) with ``gpt35_answer``."""
    root = locate("vicuna80")
    gpt35 = {a["question_id"]: a["text"] for a in read_jsonl(root / "gpt35_answer.jsonl")}
    rows = [
        {
            "question_id": q["question_id"],
            "category": q["category"],
            "text": q["text"],
            "gpt35_answer": gpt35[q["question_id"]],
        }
        for q in read_jsonl(root / "question.jsonl")
    ]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def doc_to_text(doc: dict) -> str:
    return encode_turns([doc["text"]])


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """Repeated 4-gram rate of the answer and its ROUGE-L against GPT-3.5's."""
    answer = decode_answers(results[0])[0]
    return {
        "repeated_4gram_rate": repeated_ngram_rate(answer),
        "rougeL_gpt35": rouge(answer, doc["gpt35_answer"])["rougeL"],
    }
