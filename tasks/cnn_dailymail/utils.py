"""In-context summarization of CNN/DailyMail stories, bucketed by article length as in the paper."""

from __future__ import annotations

from typing import Any

import datasets

from lmeval_ffnskip.taskdata.data import locate
from lmeval_ffnskip.taskdata.jsonfiles import read_jsonl
from lmeval_ffnskip.taskdata.metrics import repeated_ngram_rate, rouge

# article length in words: small <= 470 < medium < 790 <= large (the paper's buckets)
BUCKETS = {"small": (0, 470), "medium": (471, 789), "large": (790, 10**9)}
PAPER_FOLDERS = {"small": "small", "medium": "mid", "large": "large"}


def bucket_of(article: str) -> str:
    words = len(article.split())
    return next(name for name, (lo, hi) in BUCKETS.items() if lo <= words <= hi)


def load_bucket(bucket: str, **kwargs: Any) -> datasets.DatasetDict:
    """The test stories whose article falls in ``bucket``."""
    stories = read_jsonl(locate("cnn_dailymail"))
    rows = [
        {"id": s["id"], "article": s["article"], "highlights": s["highlights"]}
        for s in stories
        if bucket_of(s["article"]) == bucket
    ]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def parse_story(text: str) -> tuple[str, str]:
    """A ``.story`` file: the article, then ``@highlight`` paragraphs (joined as the summary)."""
    article, *highlights = text.split("@highlight")
    lines = [h.strip() for h in highlights if h.strip()]
    return article.strip(), "\n".join(lines)


def load_paper(**kwargs: Any) -> datasets.DatasetDict:
    """The 90 stories the FFN-SkipLLM authors used, with their bucket."""
    root = locate("cnn_dailymail_paper")
    rows = []
    for bucket, folder in PAPER_FOLDERS.items():
        for path in sorted((root / folder).glob("*.story")):
            article, highlights = parse_story(path.read_text(encoding="utf-8"))
            rows.append({"id": path.stem, "bucket": bucket, "article": article, "highlights": highlights})
    if not rows:
        raise FileNotFoundError(f"no .story files under {root}/{{small,mid,large}}")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L against the highlights, and the repeated 4-gram rate of the summary."""
    summary = results[0].strip()
    return {**rouge(summary, doc["highlights"]), "repeated_4gram_rate": repeated_ngram_rate(summary)}
