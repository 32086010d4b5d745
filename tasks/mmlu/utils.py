"""MMLU from hendrycks' headerless CSVs, in the schema of ``cais/mmlu`` (what lm-eval's prompts use)."""

from __future__ import annotations

import csv
from typing import Any

import datasets

from lmeval_ffnskip.taskdata.data import locate

SPLITS = {"test": "test", "dev": "dev", "validation": "val"}
FEATURES = datasets.Features(
    {
        "question": datasets.Value("string"),
        "subject": datasets.Value("string"),
        "choices": datasets.Sequence(datasets.Value("string")),
        "answer": datasets.ClassLabel(names=["A", "B", "C", "D"]),
    }
)


def rows(subject: str, split: str) -> list[dict[str, Any]]:
    """One subject's split, in file order (question, A, B, C, D, answer letter)."""
    path = locate("mmlu") / SPLITS[split] / f"{subject}_{SPLITS[split]}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"MMLU subject {subject!r}: {path} is missing")
    with path.open(encoding="utf-8", newline="") as f:
        return [
            {"question": q, "subject": subject, "choices": [a, b, c, d], "answer": "ABCD".index(ans.strip())}
            for q, a, b, c, d, ans in csv.reader(f)
        ]


def load(subject: str, **kwargs: Any) -> datasets.DatasetDict:
    """test / dev / validation splits of one subject."""
    return datasets.DatasetDict(
        {split: datasets.Dataset.from_list(rows(subject, split), features=FEATURES) for split in SPLITS}
    )
