"""WikiText-2 test articles from the raw text file, split as the document-level dataset is."""

from __future__ import annotations

import re
from typing import Any

import datasets
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer

from lmeval_ffnskip.data import locate

__all__ = ["load", "process_results", "split_articles", "wikitext_detokenizer"]

TITLE = re.compile(r"^ = [^=].* = $")  # top-level ` = Title = `; sections are ` = = Section = = `


def split_articles(text: str) -> list[str]:
    """One page per top-level heading, lines joined with newlines (CRLF normalised)."""
    pages: list[list[str]] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if TITLE.match(line) or not pages:
            pages.append([])
        pages[-1].append(line)
    return ["\n".join(lines).strip("\n") + "\n" for lines in pages if any(s.strip() for s in lines)]


def load(**kwargs: Any) -> datasets.DatasetDict:
    """The 62 test articles as ``{"page": text}`` rows."""
    text = locate("wikitext2").read_text(encoding="utf-8")
    pages = split_articles(text)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([{"page": p} for p in pages])})
