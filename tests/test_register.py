"""The .pth hook's task folder: our new tasks always, our offline mmlu / wikitext only with
FFNSKIP_DATA_DIR set, and no "overrides existing task" log lines for our own YAMLs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lm_eval.tasks
from conftest import DATA_DIR

from lmeval_ffnskip import _register
from lmeval_ffnskip.taskdata.data import tasks_dir

BUILTINS = Path(lm_eval.tasks.__file__).resolve().parent
OURS = tasks_dir()


@contextmanager
def index_records() -> Iterator[list[logging.LogRecord]]:
    """Every record lm-eval's task index logs (at any level) while the block runs."""
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("lm_eval.tasks._index")
    handler = logging.Handler()
    handler.emit = records.append
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def overrides(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if "overrides existing task" in str(r.msg)]


def _task_manager(**kwargs: object) -> object:
    from lm_eval.tasks import TaskManager

    _register.register()  # the .pth file has done this already; idempotent
    assert getattr(TaskManager.__init__, "_ffnskip", False)
    return TaskManager(**kwargs)


def test_online_the_builtins_keep_their_names_and_our_new_tasks_are_known(monkeypatch):
    monkeypatch.delenv("FFNSKIP_DATA_DIR", raising=False)
    with index_records() as records:
        index = _task_manager().task_index
    for name in ("mmlu", "mmlu_anatomy", "mmlu_stem", "wikitext"):
        assert index[name].yaml_path.resolve().is_relative_to(BUILTINS), name
    for name in ("freebaseqa", "cnn_dailymail_small", "mt_bench", "vicuna80"):
        assert index[name].yaml_path.resolve().is_relative_to(OURS), name
    assert overrides(records) == []


def test_offline_ours_replace_them_silently_and_a_users_override_still_logs(monkeypatch, tmp_path):
    monkeypatch.setenv("FFNSKIP_DATA_DIR", DATA_DIR)
    (tmp_path / "mine.yaml").write_text((OURS / "freebaseqa" / "freebaseqa.yaml").read_text())
    with index_records() as records:
        index = _task_manager(include_path=str(tmp_path)).task_index
    for name in ("mmlu", "mmlu_anatomy", "mmlu_stem", "wikitext", "cnn_dailymail_small"):
        assert index[name].yaml_path.resolve().is_relative_to(OURS), name
    assert index["freebaseqa"].yaml_path == tmp_path / "mine.yaml"  # user paths come last
    assert len(overrides(records)) == 1 and "mine.yaml" in overrides(records)[0]


def test_no_metadata_hint_for_our_tasks(monkeypatch, caplog):
    """lm-eval warns "Custom kwargs can be passed to `--metadata`" for every task that loads its
    own data; ours read none, so the hint is dropped for them (58 lines for freebaseqa,mmlu)."""
    monkeypatch.setenv("FFNSKIP_DATA_DIR", DATA_DIR)
    manager = _task_manager()
    with caplog.at_level(logging.WARNING, logger="lm_eval.api.task"):
        manager.load(["freebaseqa", "mmlu_anatomy"])
    assert not [r for r in caplog.records if "Custom kwargs" in r.getMessage()]
