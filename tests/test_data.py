"""Data location: local copy, verified download from a loopback server, and the offline error."""

from __future__ import annotations

import functools
import http.server
import json
import tarfile
import threading
from pathlib import Path

import pytest
from conftest import DATA_DIR

from lmeval_ffnskip.taskdata import data

REL = data.SOURCES["freebaseqa"].relpath


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(data.ENV, raising=False)
    return tmp_path / "cache" / "lmeval-ffnskip" / "data"


@pytest.fixture
def loopback_server(tmp_path):
    """Serves ../shared/data plus a corrupt file on 127.0.0.1."""
    (tmp_path / "bad.json").write_text("{not json")
    Path(tmp_path / "good").symlink_to(Path(DATA_DIR).resolve())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_local_copy_is_used(monkeypatch):
    monkeypatch.setenv(data.ENV, DATA_DIR)
    assert data.locate("freebaseqa") == Path(DATA_DIR) / REL


def test_download_is_verified_and_cached(empty_cache, loopback_server, monkeypatch):
    good = data.Source(REL, f"{loopback_server}/good/{REL}", data.SOURCES["freebaseqa"].build)
    monkeypatch.setitem(data.SOURCES, "freebaseqa", good)
    path = data.locate("freebaseqa")
    assert path == empty_cache / REL and path.read_bytes() == (Path(DATA_DIR) / REL).read_bytes()
    monkeypatch.setitem(data.SOURCES, "freebaseqa", data.Source(REL, "http://127.0.0.1:9/x", good.build))
    assert data.locate("freebaseqa") == path  # cached: no second download


def test_corrupt_download_is_rejected(empty_cache, loopback_server, monkeypatch):
    bad = data.Source(REL, f"{loopback_server}/bad.json", data.SOURCES["freebaseqa"].build)
    monkeypatch.setitem(data.SOURCES, "freebaseqa", bad)
    with pytest.raises(FileNotFoundError, match="not valid"):
        data.locate("freebaseqa")
    assert not [p for p in empty_cache.rglob("*") if p.is_file()]  # nothing half-written is left


def test_offline_error_names_dataset_variable_and_url(empty_cache, monkeypatch):
    offline = data.Source(REL, "http://127.0.0.1:9/FreebaseQA-eval.json", data.SOURCES["freebaseqa"].build)
    monkeypatch.setitem(data.SOURCES, "freebaseqa", offline)
    with pytest.raises(
        FileNotFoundError, match=r"dataset 'freebaseqa': FFNSKIP_DATA_DIR is not set.*127\.0\.0\.1:9"
    ):
        data.locate("freebaseqa")


def test_folder_download_from_archive(empty_cache, tmp_path, monkeypatch):
    """MMLU comes as hendrycks' data.tar; the cached folder holds its CSVs, nothing half-built."""
    archive = tmp_path / "serve" / "data.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        for split in ("dev", "test", "val"):
            tar.add(Path(DATA_DIR) / "mmlu" / split, arcname=f"data/{split}")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/data.tar"
    monkeypatch.setitem(data.SOURCES, "mmlu", data.Source("mmlu", url, data.SOURCES["mmlu"].build))
    try:
        path = data.locate("mmlu")
    finally:
        server.shutdown()
    assert path == empty_cache / "mmlu"
    expected = Path(DATA_DIR) / "mmlu" / "test" / "anatomy_test.csv"
    assert (path / "test" / "anatomy_test.csv").read_bytes() == expected.read_bytes()
    assert len(list((path / "test").glob("*.csv"))) == 57
    assert [p.name for p in empty_cache.iterdir()] == ["mmlu"]


def test_layer_skip_tarball_builds_the_vicuna_table_and_paper_stories(tmp_path):
    """The authors' repository tarball -> vicuna80/*.jsonl and paper_stories/{small,mid,large}."""
    archive = tmp_path / "layer-skip.tar.gz"
    shared = Path(DATA_DIR)
    stories = sorted((shared / "cnn_dailymail" / "paper_stories").glob("*/*.story"))
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted((shared / "vicuna80").glob("*.jsonl")):
            tar.add(f, arcname=f"layer-skip-60fadcbd/table/{f.name}")
        for f in stories:
            tar.add(f, arcname=f"layer-skip-60fadcbd/data/cnn/{f.parent.name}/{f.name}")
        tar.add(shared / "README.md", arcname="layer-skip-60fadcbd/README.md")
    for name in ("vicuna80", "cnn_dailymail_paper"):
        (tmp_path / name).mkdir()
        data.SOURCES[name].build(archive, tmp_path / name)
    assert sorted(p.name for p in (tmp_path / "vicuna80").iterdir()) == sorted(
        p.name for p in (shared / "vicuna80").glob("*.jsonl")
    )
    built = sorted((tmp_path / "cnn_dailymail_paper").glob("*/*.story"))
    assert [p.relative_to(tmp_path / "cnn_dailymail_paper") for p in built] == [
        p.relative_to(shared / "cnn_dailymail" / "paper_stories") for p in stories
    ]
    assert built[0].read_bytes() == stories[0].read_bytes()


def test_parquet_builds_and_jsonl_checks(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    wiki = tmp_path / "wiki.parquet"
    pq.write_table(pa.table({"text": ["", " = Valkyria = \n", " It is a game . \n"]}), wiki)
    data.SOURCES["wikitext2"].build(wiki, tmp_path / "wiki.raw")
    assert (tmp_path / "wiki.raw").read_text() == " = Valkyria = \n It is a game . \n"
    cnn = tmp_path / "cnn.parquet"
    story = {"id": "abc", "article": "A story.", "highlights": "Short."}
    pq.write_table(pa.table({k: [v] for k, v in {**story, "extra": "x"}.items()}), cnn)
    data.SOURCES["cnn_dailymail"].build(cnn, tmp_path / "cnn.jsonl")
    assert (tmp_path / "cnn.jsonl").read_text() == json.dumps(story) + "\n"
    wrong = tmp_path / "question.jsonl"
    wrong.write_text('{"question_id": 81, "text": "one turn only"}\n')
    with pytest.raises(ValueError, match=r"records lack \['turns'\]"):
        data.SOURCES["mt_bench"].build(wrong, tmp_path / "out.jsonl")
