"""FreebaseQA task helpers: loading and hand-checked scoring."""

from __future__ import annotations

import pytest
from conftest import DATA_DIR, task_utils

utils = task_utils("freebaseqa")


def test_load_unions_aliases_over_parses(monkeypatch):
    monkeypatch.setenv("FFNSKIP_DATA_DIR", DATA_DIR)
    test = utils.load()["test"]
    assert len(test) == 4000
    assert test[0]["question"].startswith("Who is the female presenter")
    assert test[0]["answers"] == ["sandi toksvig"]
    assert max(len(row) for row in test["answers"]) > 1  # some questions have several aliases


@pytest.mark.parametrize(
    ("generation", "answers", "exact", "contains"),
    [
        (":\n\nSandi Toksvig.\n", ["sandi toksvig"], 1.0, 1.0),
        (" The Beatles", ["beatles"], 1.0, 1.0),
        (" Paris, the capital of France.", ["paris"], 0.0, 1.0),
        (" Parisian food", ["paris"], 0.0, 0.0),
        ("\n\n", ["paris"], 0.0, 0.0),
        (" John F. Kennedy", ["george washington", "washington"], 0.0, 0.0),
    ],
)
def test_scoring(generation, answers, exact, contains):
    got = utils.process_results({"answers": answers}, [generation])
    assert got == {"exact_match": exact, "contains": contains}
