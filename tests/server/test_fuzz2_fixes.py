"""Fixes from the fuzz2 drill: a worker killed while starting does not fail the queue
(finding 3), and a damaged queue database is a one-line error at start-up (finding 4).
The CLI's --device check (finding 6) is in tests/test_cli.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import server.pool as pool
from server.app import DB_NAME
from server.storage import Storage, StorageError
from tests.server.helpers import REPO, Http, chain, free_port, wait_history


# --- finding 3: a failed worker start is retried; the queued prompts wait for it --------
def test_a_worker_killed_while_starting_is_started_again_and_the_queue_waits(
        make_server, loop, monkeypatch):
    """The drill: the idle worker killed, prompts queued while its replacement starts,
    the replacement killed (SIGKILL, as the kernel's OOM killer) during its start-up.
    Before the fix every queued prompt failed at once with WorkerUnavailable."""
    server = make_server()
    http = Http(server.url, loop)
    first = http.post("/prompt", json={"prompt": chain(1)}).json()["prompt_id"]
    assert wait_history(http, [first])[first]["status"]["status_str"] == "success"
    runtime = server.state.runtime
    queued, killed = threading.Event(), []
    real_wait_ready = pool.wait_ready

    def wait_ready(worker, *args, **kwargs):
        if not killed:  # the replacement: killed during its start, once the prompts wait
            queued.wait(30)
            killed.append(worker.pid)
            os.kill(worker.pid, signal.SIGKILL)
        return real_wait_ready(worker, *args, **kwargs)

    monkeypatch.setattr(pool, "wait_ready", wait_ready)
    starts = runtime.worker_starts
    os.kill(runtime.worker_info["pid"], signal.SIGKILL)  # the idle worker
    ids = [http.post("/prompt", json={"prompt": chain(10 + i)}).json()["prompt_id"]
           for i in range(3)]
    queued.set()
    history = wait_history(http, ids, timeout=90)
    assert killed, "the replacement worker was never started"
    for pid in ids:
        assert history[pid]["status"]["status_str"] == "success", history[pid]
    assert runtime.worker_starts >= starts + 2  # the killed start, then a good one
    assert runtime.worker_info["pid"] not in killed
    assert http.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    http.close()


def test_a_worker_that_keeps_failing_to_start_fails_the_queue_after_retries(make_server,
                                                                               loop):
    server = make_server(worker_module="tests.server.no_such_worker")
    http = Http(server.url, loop)
    t0 = time.monotonic()
    ids = [http.post("/prompt", json={"prompt": chain(i)}).json()["prompt_id"]
           for i in range(2)]
    history = wait_history(http, ids, timeout=90)
    took = time.monotonic() - t0
    for pid in ids:
        entry = history[pid]
        assert entry["status"]["status_str"] == "error"
        error = entry["status"]["messages"][-1][1]
        assert error["exception_type"] == "WorkerUnavailable"
        message = error["exception_message"]
        assert message.startswith("no worker is available: the worker could not start, "), \
            message
        assert f"{pool.START_TRIES} times in a row" in message, message
        assert "exited with code" in message, message  # the cause
    assert server.state.runtime.worker_starts >= pool.START_TRIES
    assert took < 60, took  # bounded: a few seconds of retries, not a hang
    http.close()


# --- finding 4: a damaged database is a clean error at start-up -------------------------
def _damaged_database(base: Path, note: int = 30_000) -> Path:
    """A queue database with a page in the middle overwritten (the drill's 40 KB at
    page 10), which opens fine and fails when the queue is read.

    Big bodies (``note``): the overwritten pages are their overflow pages, which only
    the start-up's repair pass reads (the drill's case: the server was listening by
    then); small ones: tree pages, which the queue's numbering reads first (before)."""
    path = base / "data" / DB_NAME
    storage = Storage(path)
    body = {"prompt": chain(1), "extra_data": {"note": "x" * note}, "outputs": ["3"]}
    storage.enqueue_many([(f"p{i:04d}", i, i, body)
                          for i in range(1, 1 + 3_000_000 // (note + 1000))])
    storage.close()
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    with open(path, "r+b") as f:
        f.seek(4096 * 10)
        f.write(b"\xde\xad" * 20000)
    return path


def test_a_damaged_database_is_a_storage_error_naming_the_file(tmp_path):
    path = _damaged_database(tmp_path)
    size = path.stat().st_size
    storage = Storage(path)  # opens: the damage is found when the queue is read
    try:
        with pytest.raises(StorageError) as info:
            storage.load_queue()
    finally:
        storage.close()
    text = str(info.value)
    assert str(path) in text and "malformed" in text and "move it" in text, text
    assert "\n" not in text
    assert path.stat().st_size == size  # nothing deleted nor rewritten


@pytest.mark.parametrize("note", [30_000, 2_000], ids=["overflow-pages", "tree-pages"])
def test_serve_on_a_damaged_database_exits_2_with_one_line(tmp_path, note):
    path = _damaged_database(tmp_path, note)
    size = path.stat().st_size
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("STEERFLOW_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "steerflow.cli", "serve", "--port", str(free_port()),
         "--base-dir", str(tmp_path), "--device", "cpu",
         "--registry", "tests.server.pack:make_registry"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot open the database "), lines
    assert str(path) in lines[0] and "move it" in lines[0] and "nothing was deleted" in lines[0]
    assert path.stat().st_size == size


def test_a_truncated_database_says_the_same(tmp_path):
    path = _damaged_database(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(StorageError) as info:
        storage = Storage(path)
        try:
            storage.load_queue()
        finally:
            storage.close()
    text = str(info.value)
    assert text.startswith(f"cannot open the database {path}: ") and "move it" in text, text
