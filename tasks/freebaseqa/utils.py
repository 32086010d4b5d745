"""FreebaseQA: data loading and answer scoring for the ``freebaseqa`` tasks."""

from __future__ import annotations

import json
import re
import string
from typing import Any

import datasets

from lmeval_ffnskip.taskdata.data import locate

PUNCTUATION = str.maketrans("", "", string.punctuation)


def load(**kwargs: Any) -> datasets.DatasetDict:
    """The eval split; answers are the union of ``AnswersName`` over all parses."""
    raw = json.loads(locate("freebaseqa").read_text(encoding="utf-8"))["Questions"]
    rows = []
    for q in raw:
        aliases = dict.fromkeys(
            name for parse in q["Parses"] for ans in parse["Answers"] for name in ans["AnswersName"]
        )
        rows.append({"id": q["Question-ID"], "question": q["RawQuestion"], "answers": list(aliases)})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def normalize(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def extract_answer(generation: str) -> str:
    """The first non-empty line, without the ':' the paper's prompt often elicits first."""
    for line in generation.split("\n"):
        line = line.strip().lstrip(":").strip()
        if line:
            return line
    return ""


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """exact_match: the extracted answer equals an alias; contains: an alias appears in it."""
    answer = normalize(extract_answer(results[0]))
    aliases = [normalize(a) for a in doc["answers"]]
    padded = f" {answer} "
    return {
        "exact_match": float(answer in aliases),
        "contains": float(any(a and f" {a} " in padded for a in aliases)),
    }
