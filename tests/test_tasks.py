"""Task data loaders and metrics, on the shared data (no model)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import DATA_DIR, task_utils
from lm_eval.api.instance import Instance

from lmeval_ffnskip.taskdata.conversation import FLAG, converse, decode_answers, encode_turns
from lmeval_ffnskip.taskdata.metrics import repeated_ngram_rate, rouge


@pytest.fixture(autouse=True)
def shared_data(monkeypatch):
    monkeypatch.setenv("FFNSKIP_DATA_DIR", DATA_DIR)


def test_wikitext_splits_into_the_62_test_articles():
    wiki = task_utils("wikitext")
    pages = wiki.load()["test"]["page"]
    assert len(pages) == 62
    assert pages[0].startswith(" = Robert Boulter = \n Robert Boulter is an English film")
    assert all(p.startswith(" = ") and not p.startswith(" = = ") for p in pages)
    assert "\r" not in "".join(pages)
    assert 230_000 < sum(len(p.split()) for p in pages) < 250_000  # ~241k words, as documented


def test_mmlu_rows_follow_the_csv_in_cais_schema():
    mmlu = task_utils("mmlu")
    ds = mmlu.load(subject="anatomy")
    assert {k: len(v) for k, v in ds.items()} == {"test": 135, "dev": 5, "validation": 14}
    with (Path(DATA_DIR) / "mmlu" / "test" / "anatomy_test.csv").open(newline="") as f:
        first = next(csv.reader(f))
    row = ds["test"][0]
    assert row["question"] == first[0] and row["choices"] == first[1:5]
    assert "ABCD"[row["answer"]] == first[5] and row["subject"] == "anatomy"
    with pytest.raises(FileNotFoundError, match="MMLU subject 'anatomyy'"):
        mmlu.load(subject="anatomyy")


def test_cnn_buckets_partition_the_stories_by_length():
    cnn = task_utils("cnn_dailymail")
    sizes = {}
    for bucket, (lo, hi) in cnn.BUCKETS.items():
        docs = cnn.load_bucket(bucket)["test"]
        assert all(lo <= len(a.split()) <= hi for a in docs["article"])
        sizes[bucket] = len(docs)
    assert sum(sizes.values()) == 250 and min(sizes.values()) > 0
    paper = cnn.load_paper()["test"]
    assert len(paper) == 90 and paper["bucket"].count("large") == 30
    assert all(p["highlights"] and "@highlight" not in p["article"] for p in paper)


def test_parse_story():
    cnn = task_utils("cnn_dailymail")
    assert cnn.parse_story("Body text.\n\n@highlight\n\nFirst point\n\n@highlight\n\nSecond") == (
        "Body text.",
        "First point\nSecond",
    )


def test_metrics():
    assert rouge("the cat sat on the mat", "the cat sat on the mat") == {
        "rouge1": 100.0,
        "rouge2": 100.0,
        "rougeL": 100.0,
    }
    assert rouge("dogs bark", "the cat sat")["rouge1"] == 0.0
    assert repeated_ngram_rate("a b c d a b c d a b c d") == pytest.approx(1 - 4 / 9)
    assert repeated_ngram_rate("one two three four five") == 0.0
    assert repeated_ngram_rate("too short") == 0.0


def test_mt_bench_and_vicuna80_docs():
    mt = task_utils("mt_bench").load()["test"]
    assert len(mt) == 80 and all(len(d["turns"]) == 2 for d in mt)
    with_ref = {d["category"] for d in mt if d["reference"]}
    assert with_ref == {"math", "reasoning", "coding"} and sum(bool(d["reference"]) for d in mt) == 30
    vicuna = task_utils("vicuna80").load()["test"]
    assert len(vicuna) == 80 and all(d["gpt35_answer"] and d["text"] for d in vicuna)


def test_mt_bench_metrics_define_reference_rouge_only_where_a_reference_exists():
    utils = task_utils("mt_bench")
    docs = {d["category"]: d for d in utils.load()["test"]}
    loop = "the the the the the the the the"
    writing = utils.process_results(docs["writing"], [encode_turns(["Fresh words here.", loop])])
    assert writing["rougeL_reference"] is None
    assert writing["repeated_4gram_rate"] == pytest.approx((0 + 4 / 5) / 2)
    math = docs["math"]
    exact = utils.process_results(math, [encode_turns(math["reference"])])
    assert exact["rougeL_reference"] == pytest.approx(100)
    assert utils.mean_defined([None, 50.0, None, 100.0]) == 75.0


def test_converse_answers_each_turn_in_context_of_the_models_own_answers():
    requests = [
        Instance("generate_until", {}, (encode_turns(["hi", "and then?"]), {FLAG: True, "until": []}), 0),
        Instance("generate_until", {}, (encode_turns(["one turn"]), {FLAG: True, "until": []}), 0),
    ]
    calls = []

    def generate(batch: list[Instance]) -> list[str]:
        calls.append([r.args for r in batch])
        return [f" answer{len(calls)}.{i} " for i in range(len(batch))]

    template = lambda messages: "|".join(f"{m['role']}:{m['content']}" for m in messages)  # noqa: E731
    out = converse(requests, template, generate)
    assert [decode_answers(o) for o in out] == [["answer1.0", "answer2.0"], ["answer1.1"]]
    assert calls == [
        [("user:hi", {"until": []}), ("user:one turn", {"until": []})],
        [("user:hi|assistant:answer1.0|user:and then?", {"until": []})],
    ]


def test_conversation_refuses_a_chat_templated_context():
    templated = Instance("generate_until", {}, ("<|user|>" + encode_turns(["hi"]), {FLAG: True}), 0)
    with pytest.raises(ValueError, match="without --apply_chat_template"):
        converse([templated], str, list)
