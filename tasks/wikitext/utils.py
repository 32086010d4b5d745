"""WikiText-2 test articles from the raw text file, split as the document-level dataset is."""

from __future__ import annotations

from typing import Any

import datasets
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer

from lmeval_ffnskip.taskdata.data import split_articles, wikitext_articles

__all__ = ["load", "process_results", "split_articles", "wikitext_detokenizer"]


def load(**kwargs: Any) -> datasets.DatasetDict:
    """The 62 test articles as ``{"page": text}`` rows."""
    pages = wikitext_articles()
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([{"page": p} for p in pages])})
