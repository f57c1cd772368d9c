"""The database file deleted while the server runs (the fault drill: everything written
after an ``rm data/steerflow.db*`` was lost at the next start, without a word)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from server.storage import Storage


def _entry(text: str) -> dict:
    return {"outputs": {"1": {"text": [text]}}, "status": {"status_str": "success"}}


def _history(path: Path) -> list[str]:
    storage = Storage(path)
    try:
        return [pid for pid, _ in storage.history()]
    finally:
        storage.close()


def test_a_deleted_database_is_written_again_with_everything_it_held(tmp_path, caplog):
    path = tmp_path / "data" / "steerflow.db"
    storage = Storage(path)
    storage.finish("before", 1, _entry("a"))
    for name in os.listdir(path.parent):
        os.unlink(path.parent / name)  # rm data/steerflow.db*
    with caplog.at_level(logging.ERROR, logger="server.db_file"):
        storage.finish("after", 2, _entry("b"))
    assert "was written again" in caplog.text
    assert path.is_file()
    storage.finish("later", 3, _entry("c"))  # on the new file now
    storage.close()
    assert _history(path) == ["before", "after", "later"]


def test_a_replaced_database_is_said_once(tmp_path, caplog):
    path = tmp_path / "steerflow.db"
    storage = Storage(path)
    os.replace(path, tmp_path / "moved.db")
    path.write_bytes(b"")
    with caplog.at_level(logging.ERROR, logger="server.db_file"):
        storage.finish("x", 1, _entry("a"))
        storage.finish("y", 2, _entry("b"))
    assert caplog.text.count("was replaced while the server ran") == 1
    storage.close()
