"""A worker's output pipes: what it prints reaches the sinks; a hard stop takes the
processes it started along, and the threads draining its pipes end."""

from __future__ import annotations

import os
import re
import threading
import time

from server.worker import WorkerProcess
from server.worker_output import add_sink, remove_sink


def _drains(pid: int) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"steerflow-worker-{pid}-")]


def test_a_killed_worker_takes_its_helpers_along_and_its_drain_threads_end():
    """The soak drill: a node that had started a helper process left it running after a
    hard stop, holding the worker's pipes: two threads and two fds stayed per stop."""
    seen: list[str] = []
    add_sink(seen.append)
    try:
        worker = WorkerProcess({}, module="tests.server.fake_worker_child")
        deadline = time.monotonic() + 30
        while not (found := re.search(r"helper (\d+)", "".join(seen))):
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
        helper = int(found.group(1))
        assert len(_drains(worker.pid)) == 2
        worker.kill()
        deadline = time.monotonic() + 10
        while _drains(worker.pid) or _running(helper):
            assert time.monotonic() < deadline, (_drains(worker.pid), _running(helper))
            time.sleep(0.1)
    finally:
        remove_sink(seen.append)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie is gone
    except FileNotFoundError:
        return False
    except OSError:
        return os.path.exists(f"/proc/{pid}")


def test_a_tool_a_node_started_dies_when_the_server_is_killed(tmp_path, loop):
    """A kill -9 of the server SIGKILLs its worker, which cannot clean up: the helper a
    node had started ran on (an older drill). The worker's group guard kills it."""
    from tests.server.helpers import Http, SubprocessServer, wait_history

    server = SubprocessServer(tmp_path)
    try:
        server.wait_ready()
        http = Http(server.url, loop)
        prompt = {"1": {"class_type": "TestSpawn", "inputs": {"seconds": 300}}}
        prompt_id = http.post("/prompt", json={"prompt": prompt}).json()["prompt_id"]
        entry = wait_history(http, [prompt_id])[prompt_id]
        http.close()
        (helper,) = entry["outputs"]["1"]["pid"]
        assert _running(helper)
        server.kill()
        deadline = time.monotonic() + 10
        while _running(helper):
            assert time.monotonic() < deadline, "the helper outlived the server"
            time.sleep(0.1)
    finally:
        server.stop()
