"""Persistence: a killed server comes back with its queue; nothing is lost silently."""

from __future__ import annotations

import logging
import time

import pytest

from server.app import DB_NAME
from server.storage import Storage, StorageError
from tests.server.helpers import (
    Http,
    InProcessServer,
    SubprocessServer,
    chain,
    slow,
    wait_history,
)


@pytest.mark.slow
def test_kill_9_then_restart_runs_everything(tmp_path, loop):
    first = SubprocessServer(tmp_path)
    try:
        first.wait_ready()
        http = Http(first.url, loop)
        ids = [http.post("/prompt", json={"prompt": slow(150, value=i)}).json()["prompt_id"]
               for i in range(5)]
        deadline = time.monotonic() + 30
        while not http.get("/queue").json()["queue_running"]:
            assert time.monotonic() < deadline, "nothing started running"
            time.sleep(0.02)
        first.kill()
        http.close()
    finally:
        first.stop()
    second = SubprocessServer(tmp_path, first.port)
    try:
        second.wait_ready()
        http = Http(second.url, loop)
        history = wait_history(http, ids, timeout=60)
        assert all(history[pid]["status"]["status_str"] == "success" for pid in ids), history
        assert http.get("/queue").json() == {"queue_running": [], "queue_pending": []}
        http.close()
    finally:
        output = second.stop()
    assert "Traceback" not in output, output


def test_interrupted_run_is_requeued_or_failed_after_max_attempts(make_server, tmp_path, loop):
    storage = Storage(tmp_path / "data" / DB_NAME)
    body = {"prompt": chain(3), "extra_data": {}, "outputs": ["3"]}
    storage.enqueue("crashed-once", 1, 1, body)
    storage.mark_running("crashed-once")
    storage.enqueue("crashes-always", 2, 2, body)
    for _ in range(3):
        storage.mark_running("crashes-always")
    storage.enqueue("pending", 3, 3, body)
    storage.close()
    server = make_server(base_dir=tmp_path)
    http = Http(server.url, loop)
    history = wait_history(http, ["crashed-once", "crashes-always", "pending"])
    assert history["crashed-once"]["status"]["status_str"] == "success"
    # its entry says it ran again, and why (as after a worker's crash)
    [retry] = [m for m in history["crashed-once"]["status"]["messages"]
               if m[0] == "steerflow_retry"]
    assert retry[1]["attempt"] == 1 and "the server stopped" in retry[1]["message"]
    assert history["pending"]["status"]["status_str"] == "success"
    assert not [m for m in history["pending"]["status"]["messages"] if m[0] == "steerflow_retry"]
    failed = history["crashes-always"]["status"]
    assert failed["status_str"] == "error"
    assert failed["messages"][0][0] == "execution_error"
    assert "3 time(s)" in failed["messages"][0][1]["exception_message"]
    # New prompts are numbered after the recovered ones.
    assert http.post("/prompt", json={"prompt": chain()}).json()["number"] > 3
    http.close()


def test_graceful_stop_puts_the_running_prompt_back(make_server, tmp_path, loop, caplog):
    """SIGTERM and Ctrl-C stop the server this way; each end says what goes back in the
    queue, and the start what came back."""
    caplog.set_level(logging.INFO, logger="server")
    server = make_server(base_dir=tmp_path)
    http = Http(server.url, loop)
    pid = http.post("/prompt", json={"prompt": slow(100000)}).json()["prompt_id"]
    deadline = time.monotonic() + 20
    while not http.get("/queue").json()["queue_running"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    http.close()
    config = server.state.config
    server.stop()
    said = [r.getMessage() for r in caplog.records]
    assert "stopping: 1 running/pending prompt(s) go back in the queue" in said, said
    again = InProcessServer(config)
    try:
        http = Http(again.live.url, loop)
        queue = http.get("/queue").json()
        assert [i[1] for i in queue["queue_running"] + queue["queue_pending"]] == [pid]
        said = [r.getMessage() for r in caplog.records]
        assert any(m.startswith("restored 1 prompt(s) to the queue") for m in said), said
        http.post("/interrupt")
        http.post("/queue", json={"clear": True})
        http.close()
    finally:
        again.stop()



def test_stopping_does_not_wait_the_interrupt_grace_for_a_node_that_ignores_it(
        make_server, tmp_path, loop):
    """Ctrl-C with a node holding the GIL waited the whole interrupt_grace (plus a
    second); the README promises about a second. The prompt still goes back."""
    server = make_server(base_dir=tmp_path, interrupt_grace=30.0)
    http = Http(server.url, loop)
    pid = http.post("/prompt", json={"prompt": {"1": {"class_type": "TestHog", "inputs": {
        "digits": 2_000_000}}}}).json()["prompt_id"]
    deadline = time.monotonic() + 60
    while not http.get("/queue").json()["queue_running"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # the hog is inside its one long C call
    http.close()
    config = server.state.config
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < config.interrupt_grace / 2
    again = InProcessServer(config)
    try:
        http = Http(again.live.url, loop)
        queue = http.get("/queue").json()
        assert [i[1] for i in queue["queue_running"] + queue["queue_pending"]] == [pid]
        http.post("/queue", json={"clear": True})
        http.post("/interrupt")
        http.close()
    finally:
        again.stop()


def test_second_server_on_the_same_data_folder_is_refused(make_server, tmp_path):
    make_server(base_dir=tmp_path)
    with pytest.raises(StorageError, match="in use by another Steerflow server"):
        make_server(base_dir=tmp_path)
