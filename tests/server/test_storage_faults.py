"""Storage faults a disk drill found (faults3): a damaged history row, a full data disk
under the queue's writes, a read-only database, an upload folder that cannot be made."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import random
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

import server.pool as pool
from server.pool import FailureEpisode
from server.storage import Storage, StorageError, open_error
from tests.server.helpers import Http, LiveServer

FULL = "database or disk is full"


def entry(i: int) -> dict[str, Any]:
    """A finished prompt's history entry, with an image output named after it."""
    return {"prompt": [i, f"p{i}", {}, {"create_time": 1000 + i}, ["9"]],
            "outputs": {"9": {"images": [{"filename": f"p{i}_00001_.png", "subfolder": "",
                                          "type": "output"}]}},
            "status": {"status_str": "success", "completed": True,
                       "messages": [["execution_start", {"timestamp": 1}],
                                    ["execution_success", {"timestamp": 2}]]}}


def damaged_base(tmp_path: Path, new: bytes) -> Path:
    """A base folder whose history holds p0..p2, p1's entry with one same-length edit
    in its bytes (a bit flip or bad sector sqlite's integrity_check does not see)."""
    db = tmp_path / "data" / "steerflow.db"
    storage = Storage(db)
    for i in range(3):
        storage.finish(f"p{i}", i, entry(i))
    storage.close()
    raw = db.read_bytes()
    needle = b'"filename": "p1_00001_.png"'
    assert raw.count(needle) == 1 and len(new) == len(needle)
    db.write_bytes(raw.replace(needle, new))
    with closing(sqlite3.connect(db)) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    return tmp_path


@pytest.mark.parametrize("new", [b'"filename"} "p1_00001_.png"',  # not JSON
                                 b'"filename": "p1_00001_.pn\xff"'])  # not UTF-8
def test_one_damaged_history_row_is_left_out_with_one_warning(
        make_server: Callable[..., LiveServer], loop: Any, tmp_path: Path, new: bytes,
        caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, "server.storage")
    server = make_server(base_dir=damaged_base(tmp_path, new))
    http = Http(server.url, loop)
    try:
        for _ in range(2):
            history = http.get("/history?max_items=50")
            assert history.status == 200 and list(history.json()) == ["p0", "p2"]
            assert http.get("/history").json().keys() == {"p0", "p2"}
            assert http.get("/history/p1").json() == {}
            assert http.get("/history/p2").json()["p2"]["outputs"]["9"]
            jobs = http.get("/api/jobs?limit=50")
            assert jobs.status == 200
            assert [job["id"] for job in jobs.json()["jobs"]] == ["p2", "p0"]
            assert http.get("/api/jobs/p1").status == 404
            assert http.get("/api/jobs/p0").json()["status"] == "completed"
        warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
        assert len(warnings) == 1 and '"p1"' in warnings[0]  # once per row, not per request
        assert 'POST /history {"delete": ["p1"]}' in warnings[0]
        assert http.post("/history", json={"delete": ["p1"]}).status == 200
        assert http.post("/api/jobs/cancel", json={"job_ids": ["p0"]}).status == 200
    finally:
        http.close()


def test_a_history_row_whose_prompt_id_does_not_decode_is_left_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """As garbage on an index page reads: sqlite's own decoding failed the whole query."""
    storage = Storage(tmp_path / "steerflow.db")
    for i in range(3):
        storage.finish(f"p{i}", i, entry(i))
    storage._db.execute("UPDATE history SET prompt_id=CAST(x'70ff' AS TEXT) "
                        "WHERE prompt_id='p1'")
    storage._sound.clear()  # as after a restart
    with caplog.at_level(logging.WARNING, "server.storage"):
        assert [pid for pid, _ in storage.history()] == ["p0", "p2"]
        total, rows = storage.history_job_rows(None, 10, 0)
        assert total == 3 and [row[0] for row in rows] == ["p2", "p0"]
    assert len([r for r in caplog.records if "damaged" in r.getMessage()]) == 1
    storage.close()


def test_a_history_row_written_by_this_server_is_spliced_unparsed(tmp_path: Path,
                                                                  monkeypatch):
    storage = Storage(tmp_path / "steerflow.db")
    storage.finish("p0", 0, entry(0))
    monkeypatch.setattr("server.storage._history_text", lambda raw: pytest.fail("parsed"))
    assert json.loads(storage.history()[0][1])["outputs"]
    storage.close()


def test_the_oldest_entries_are_dropped_by_row_even_a_damaged_one(tmp_path: Path):
    storage = Storage(tmp_path / "steerflow.db")
    for i in range(4):
        storage.finish(f"p{i}", i, entry(i))
    storage._db.execute("UPDATE history SET entry='{\"x\"' WHERE prompt_id='p0'")
    storage._sound.clear()
    assert storage.drop_oldest(2) == 2
    assert [pid for pid, _ in storage.history()] == ["p2", "p3"]
    storage.close()


def test_a_damaged_page_met_by_a_request_is_a_503_naming_the_file(
        server: LiveServer, http: Http, monkeypatch):
    def malformed(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(server.state.storage, "history", malformed)
    reply = http.get("/history")
    assert reply.status == 503
    error = reply.json()["error"]
    assert error["type"] == "database_damaged" and "steerflow.db" in error["message"]
    assert "stop the server, then move it" in error["message"]


# --- a full data disk -----------------------------------------------------------------
def _full(*args: Any, **kwargs: Any) -> None:
    raise sqlite3.OperationalError(FULL)


@pytest.mark.parametrize(("path", "body"), [
    ("/queue", {"delete": ["x"]}), ("/queue", {"clear": True}),
    ("/api/jobs/x/cancel", None), ("/jobs/cancel", {"job_ids": ["x"]})])
def test_queue_changes_on_a_full_disk_are_the_503_of_post_prompt(
        server: LiveServer, http: Http, monkeypatch, path: str, body: Any):
    monkeypatch.setattr(server.state.queue, "delete", _full)
    monkeypatch.setattr(server.state.queue, "__contains__", lambda *_: True, raising=False)
    monkeypatch.setattr(server.state.storage, "in_history", lambda _: True)
    reply = http.post(path, json=body) if body is not None else http.post(path)
    assert reply.status == 503, reply.body
    error = reply.json()["error"]
    assert error["type"] == "queue_unavailable" and FULL in error["message"]


def test_post_prompt_on_a_full_disk_keeps_its_503(server: LiveServer, http: Http,
                                                  monkeypatch):
    from tests.server.helpers import chain

    async def full(item: Any) -> None:
        _full()

    monkeypatch.setattr(server.state.queue, "submit", full)
    reply = http.post("/prompt", json={"prompt": chain()})
    assert reply.status == 503 and reply.json()["error"]["type"] == "queue_unavailable"
    assert FULL in reply.json()["error"]["message"] and reply.json()["node_errors"] == {}


def test_a_repeated_failure_logs_its_traceback_once_then_a_line_a_minute(
        monkeypatch, caplog: pytest.LogCaptureFixture):
    now = [100.0]
    monkeypatch.setattr(pool.time, "monotonic", lambda: now[0])
    episode = FailureEpisode("cannot take a prompt from the queue",
                             "prompts are taken from the queue again")
    caplog.set_level(logging.INFO, "server.pool")
    for _ in range(150):  # two and a half minutes of a retry a second
        try:
            _full()
        except sqlite3.OperationalError as exc:
            episode.failed(exc)
        now[0] += 1
    episode.recovered()
    episode.recovered()
    records = [r for r in caplog.records if r.name == "server.pool"]
    assert [r.exc_info is not None for r in records] == [True, False, False, False]
    assert "for 60 s now" in records[1].getMessage() and FULL in records[1].getMessage()
    assert "for 120 s now" in records[2].getMessage()
    assert records[3].getMessage() == ("prompts are taken from the queue again after 150 s "
                                       "(150 failed tries)")
    episode.failed(sqlite3.OperationalError(FULL))  # a new episode: its traceback again
    assert caplog.records[-1].exc_info is not None


# --- a read-only database -------------------------------------------------------------
class _Vfs:
    def __init__(self, flag: int):
        self.f_flag = flag


def _no_io(*args: Any, **kwargs: Any) -> None:
    raise sqlite3.OperationalError("disk I/O error")


def test_a_read_only_file_system_is_named_at_start(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("server.storage.sqlite3.connect", _no_io)
    monkeypatch.setattr("server.storage.os.statvfs", lambda p: _Vfs(os.ST_RDONLY))
    with pytest.raises(StorageError) as info:
        Storage(tmp_path / "data" / "steerflow.db")
    text = str(info.value)
    assert "disk I/O error" in text and "is on a read-only file system" in text
    assert "mount it read-write" in text and "damaged" not in text


def test_a_database_this_user_cannot_write_is_named(tmp_path: Path, monkeypatch):
    db = tmp_path / "steerflow.db"
    db.write_bytes(b"")
    monkeypatch.setattr("server.storage.os.statvfs", lambda p: _Vfs(0))
    monkeypatch.setattr("server.storage.os.access", lambda p, mode: Path(p) != db)
    text = str(open_error(db, sqlite3.OperationalError("attempt to write a readonly "
                                                        "database")))
    assert f"{db} is not writable by this user" in text


def test_a_data_folder_that_cannot_be_made_is_one_line(tmp_path: Path, monkeypatch):
    def read_only(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(StorageError, match=r"cannot create the data folder .*Read-only"):
        Storage(tmp_path / "data" / "steerflow.db")


def test_a_damaged_file_at_start_gives_only_the_fatal_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    db = tmp_path / "steerflow.db"
    storage = Storage(db)
    for i in range(60):  # many pages
        storage.finish(f"p{i}", i, {**entry(i), "pad": "x" * 3000})
    storage._db.execute("UPDATE history SET status=NULL")  # rows of an older version
    storage.close()
    raw = bytearray(db.read_bytes())
    page = 4096
    pages = len(raw) // page
    garbage = random.Random(3).randbytes(500)
    for n in range(2, pages - 1):  # garbage over every page but the schema's and the last
        raw[n * page + 100:n * page + 600] = garbage
    db.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, "server.storage"), \
            pytest.raises(StorageError, match="the file is damaged"):
        Storage(db).load_queue()
    assert "cannot record the job status" not in caplog.text


# --- upload folders -------------------------------------------------------------------
def _form(**fields: str) -> aiohttp.FormData:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    form = aiohttp.FormData()
    form.add_field("image", buf.getvalue(), filename="a.png", content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    return form


@pytest.mark.parametrize(("code", "status"), [(errno.EROFS, 500), (errno.ENOSPC, 507)])
def test_an_upload_subfolder_the_disk_refuses_is_the_server_s_write_failed(
        http: Http, monkeypatch, code: int, status: int):
    real = Path.mkdir

    def refuse(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.name == "new":
            raise OSError(code, os.strerror(code))
        real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    reply = http.post("/upload/image", data=_form(subfolder="new"))
    assert reply.status == status, reply.body
    error = reply.json()["error"]
    assert error["type"] == "write_failed" and "cannot create subfolder" in error["message"]


def test_an_upload_subfolder_through_a_file_is_still_the_request_s_400(
        server: LiveServer, http: Http):
    (server.base_dir / "input").mkdir(exist_ok=True)
    (server.base_dir / "input" / "file").write_bytes(b"x")
    reply = http.post("/upload/image", data=_form(subfolder="file/sub"))
    assert reply.status == 400 and reply.json()["error"]["type"] == "invalid_path"
