"""Prompts run in a worker process: no node can stall or crash the server."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.server.helpers import Http, LiveServer, chain, recv_until, slow, wait_history

SHARED_SERVER = True  # one server for the module (conftest.py); make_server for a fresh one


def hog(digits: int = 300_000) -> dict:
    return {"1": {"class_type": "TestHog", "inputs": {"digits": digits}}}


def crash(sig: str) -> dict:
    return {"1": {"class_type": "TestCrash", "inputs": {"sig": sig}}}


def wait_executing(ws, prompt_id: str, node: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = json.loads(ws.recv())
        if msg["type"] == "executing" and msg["data"] == {
                "node": node, "display_node": node, "prompt_id": prompt_id}:
            return
    raise TimeoutError(f"node {node} of {prompt_id} never started")


def test_gil_hog_does_not_stall_the_server_and_a_hard_interrupt_ends_it(
        server: LiveServer, http: Http, monkeypatch):
    monkeypatch.setattr(server.state.config, "interrupt_grace", 1.0)  # --interrupt-grace 1
    ws = server.connect_ws("hog")
    pid = http.post("/prompt", json={"prompt": hog(), "client_id": "hog"}).json()["prompt_id"]
    wait_executing(ws, pid, "1")
    worker_pid = server.state.runtime.worker_info["pid"]
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        assert http.get("/system_stats").status == 200
        times.append(time.perf_counter() - t0)
    # In-process execution made this wait for the node (30 s in the drill); the figure
    # measured here is ~2 ms: the bound only allows for a noisy machine.
    assert max(times) < 1.0, times
    assert http.post("/interrupt", json={"prompt_id": pid}).json() == {"interrupted": True}
    events, _ = recv_until(ws, pid, timeout=20)
    assert "execution_interrupted" in [e["type"] for e in events]
    entry = wait_history(http, [pid])[pid]
    assert entry["status"]["status_str"] == "error"
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    note = entry["status"]["messages"][-1][1]["steerflow_note"]  # why the next one waits
    assert "worker was restarted" in note and "1 s" in note
    # A fresh worker runs the next prompt; the interrupted one is not run again.
    nxt = http.post("/prompt", json={"prompt": chain(4)}).json()["prompt_id"]
    assert wait_history(http, [nxt])[nxt]["status"]["status_str"] == "success"
    assert server.state.runtime.worker_info["pid"] != worker_pid
    assert http.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    ws.close()


def test_a_stop_waits_for_work_a_node_must_finish(server: LiveServer, http: Http, monkeypatch):
    """Stop during a large training checkpoint's write (seconds) killed the worker after
    the interrupt grace, losing the checkpoint a Stop promises (the training drill): work
    marked ``finishing`` is waited for, and the worker kept."""
    monkeypatch.setattr(server.state.config, "interrupt_grace", 1.0)  # --interrupt-grace 1
    ws = server.connect_ws("finishing")
    node = {"class_type": "TestFinishing", "inputs": {"name": "finishing-test.txt", "seconds": 3.0}}
    reply = http.post("/prompt", json={"prompt": {"1": node}, "client_id": "finishing"}).json()
    pid = reply["prompt_id"]
    wait_executing(ws, pid, "1")
    worker_pid = server.state.runtime.worker_info["pid"]
    assert http.post("/interrupt", json={"prompt_id": pid}).json() == {"interrupted": True}
    events, _ = recv_until(ws, pid, timeout=30)
    types = [e["type"] for e in events]
    assert "execution_interrupted" in types and "finishing" not in types  # not for clients
    entry = wait_history(http, [pid])[pid]
    assert "steerflow_note" not in entry["status"]["messages"][-1][1]  # it stopped by itself
    assert (server.base_dir / "output" / "finishing-test.txt").read_text() == "complete"
    assert server.state.runtime.worker_info["pid"] == worker_pid
    ws.close()


def test_finishing_work_holds_off_the_kill_within_its_limit():
    """The kill's time (Running.kill_at) with ``finishing`` events, nested ones too."""
    from server.prompt_queue import QueueItem
    from server.runtime import Running

    running = Running(QueueItem(1, "p", {}, {}, []))
    assert running.kill_at() is None
    now = time.monotonic()
    running.hard_deadline = now + 1
    running.finishing({"active": True, "limit": 30}, grace=2)
    running.finishing({"active": True, "limit": 5}, grace=2)  # inside the first
    assert now + 29 < running.kill_at() <= time.monotonic() + 30
    running.finishing({"active": False}, grace=2)
    assert running.kill_at() > now + 29  # the outer one still holds
    running.finishing({"active": False}, grace=2)
    assert time.monotonic() + 1.5 < running.kill_at() <= time.monotonic() + 2  # grace after
    running.finishing({"active": True, "limit": float("inf")}, grace=2)  # a bad limit: none
    assert running.kill_at() <= time.monotonic() + 2


def test_cooperative_interrupt_keeps_the_worker(server: LiveServer, http: Http):
    ws = server.connect_ws("coop")
    pid = http.post("/prompt", json={"prompt": {
        "1": {"class_type": "TestSource", "inputs": {"value": 1}},
        "2": {"class_type": "TestSlow", "inputs": {"x": ["1", 0], "steps": 100000}},
        "3": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}}},
        "client_id": "coop"}).json()["prompt_id"]
    wait_executing(ws, pid, "2")
    worker_pid = server.state.runtime.worker_info["pid"]
    assert http.post("/interrupt").json() == {"interrupted": True}
    events, _ = recv_until(ws, pid)
    assert events[-2]["type"] == "execution_interrupted"
    assert "steerflow_note" not in events[-2]["data"]  # it stopped by itself
    assert server.state.runtime.worker_info["pid"] == worker_pid
    assert http.post("/interrupt").json() == {"interrupted": False}  # nothing runs
    ws.close()


@pytest.mark.parametrize("sig, cause", [("SIGSEGV", "killed by SIGSEGV"),
                                        ("SIGKILL", "out of memory"),
                                        ("EXIT", "exited with code 3")])
def test_a_prompt_that_crashes_its_worker_every_time_fails_with_the_cause(
        server: LiveServer, http: Http, sig: str, cause: str, monkeypatch):
    # two attempts (of the default three) show the re-queue: each is a worker start
    monkeypatch.setattr(server.state.queue, "max_attempts", 2)
    ws = server.connect_ws("crash")
    pid = http.post("/prompt", json={"prompt": crash(sig), "client_id": "crash"}
                    ).json()["prompt_id"]
    after = http.post("/prompt", json={"prompt": chain(2)}).json()["prompt_id"]
    # a worker start per attempt: slow when the machine is loaded (CI timed out at 120 s)
    events, _ = recv_until(ws, pid, timeout=300)
    error = next(e for e in events if e["type"] == "execution_error")["data"]
    # Re-queued after each crash (the attempt counted), failed after max_attempts.
    attempts = server.state.queue.max_attempts
    assert cause in error["exception_message"], error
    assert f"{attempts} time(s)" in error["exception_message"], error
    assert error["exception_type"] == "WorkerDied"
    assert error["node_id"] == "1" and error["node_type"] == "TestCrash"
    history = wait_history(http, [pid, after], timeout=60)
    assert history[pid]["status"]["status_str"] == "error"
    assert history[pid]["status"]["messages"][-1][1]["exception_message"] == \
        error["exception_message"]
    assert history[after]["status"]["status_str"] == "success"  # on a new worker
    assert server.state.runtime.worker_starts >= attempts  # restarted after each crash
    ws.close()


def test_a_prompt_the_kernel_kills_for_memory_is_not_run_again(server: LiveServer,
                                                               http: Http, monkeypatch):
    """Run again, a prompt that took the host's memory would most likely take it again
    (a drill's 20 MiB prompt made three host-wide OOM kills in a row)."""
    import server.worker as worker_module

    counts = iter(range(100, 10**6))  # the kernel's oom_kill count moves at each read
    monkeypatch.setattr(worker_module, "oom_kills", lambda: next(counts))
    starts = server.state.runtime.worker_starts  # the module's server: its worker is up
    ws = server.connect_ws("oom")
    pid = http.post("/prompt", json={"prompt": crash("SIGKILL"), "client_id": "oom"}
                    ).json()["prompt_id"]
    events, _ = recv_until(ws, pid, timeout=120)
    error = next(e for e in events if e["type"] == "execution_error")["data"]
    assert error["exception_message"].startswith(worker_module.OOM_KILLED), error
    assert "not run again" in error["exception_message"]
    assert server.state.runtime.worker_starts - starts <= 1  # only the replacement
    ws.close()


def test_a_worker_killed_mid_prompt_runs_it_again_on_a_new_worker(server: LiveServer,
                                                                   http: Http):
    ws = server.connect_ws("killed")
    pid = http.post("/prompt", json={"prompt": slow(100000), "client_id": "killed"}
                    ).json()["prompt_id"]
    wait_executing(ws, pid, "2")
    worker_pid = server.state.runtime.worker_info["pid"]
    os.kill(worker_pid, signal.SIGKILL)
    wait_executing(ws, pid, "2")  # the second attempt, on a new worker
    assert server.state.runtime.worker_info["pid"] != worker_pid
    [running], pending = server.state.queue.snapshot()
    assert running[1] == pid and pending == []
    assert http.post("/interrupt").json() == {"interrupted": True}
    events, _ = recv_until(ws, pid)
    assert events[-2]["type"] == "execution_interrupted"
    ws.close()


def test_a_worker_that_cannot_start_fails_prompts_with_the_cause(make_server, loop,
                                                                 quick_start_retries):
    server = make_server(worker_module="tests.server.no_such_worker")
    http = Http(server.url, loop)
    pid = http.post("/prompt", json={"prompt": chain()}).json()["prompt_id"]
    entry = wait_history(http, [pid], timeout=60)[pid]
    error = entry["status"]["messages"][-1][1]
    assert entry["status"]["status_str"] == "error"
    assert "worker" in error["exception_message"]
    assert http.get("/system_stats").json()["system"]["worker"]["error"]
    http.close()


def test_cache_budget_reaches_the_worker(server: LiveServer, make_server, loop):
    big = {"1": {"class_type": "TestSource", "inputs": {"value": 1, "label": "x" * 50_000}},
           "2": {"class_type": "TestOut", "inputs": {"value": ["1", 0]}}}
    assert server.state.config.cache_budget is None  # the module's server: the default
    for budget, bounded in ((None, False), ("cpu=1KiB", True)):
        if budget is not None:
            server = make_server(cache_budget=budget)
        http = Http(server.url, loop)
        pid = http.post("/prompt", json={"prompt": big}).json()["prompt_id"]
        assert wait_history(http, [pid])[pid]["status"]["status_str"] == "success"
        used = server.state.runtime.worker_info["cache_bytes"].get("cpu", 0)
        assert (used <= 1024) if bounded else (used >= 50_000), (budget, used)
        http.close()


def test_a_bad_cache_budget_is_refused_at_start():
    from server.config import ConfigError, ServerConfig

    for bad in ("lots", "-1GiB", "cpu=2GiB,cpu=1GiB", "101%"):
        with pytest.raises(ConfigError, match="--cache-budget"):
            ServerConfig(cache_budget=bad).check()
