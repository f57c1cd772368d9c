"""``serve --workers N``: a pool of local workers behind the one queue (server/pool.py)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from server.config import ServerConfig
from server.pool import PoolRuntime, Slot
from server.prompt_queue import QueueItem
from server.worker import WorkerDied, WorkerListener, decode, encode_file, prompt_models
from tests.server.helpers import (
    Http,
    InProcessServer,
    LiveServer,
    SubprocessServer,
    slow,
    wait_history,
)

POOL_REGISTRY = "tests.server.pool_pack:make_registry"


def probe(steps: int = 0, seed: int = 0, ckpt: str | None = None) -> dict[str, Any]:
    """A prompt that reports the pid of the worker that ran it (and loads ``ckpt``)."""
    prompt: dict[str, Any] = {"2": {"class_type": "TestWorkerPid",
                                    "inputs": {"steps": steps, "seed": seed}}}
    if ckpt is not None:
        prompt["1"] = {"class_type": "TestLoadModel", "inputs": {"ckpt_name": ckpt}}
        prompt["2"]["inputs"]["model"] = ["1", 0]
    return prompt


def submit(http: Http, prompt: dict[str, Any], client: str = "c") -> str:
    reply = http.post("/prompt", json={"prompt": prompt, "client_id": client})
    assert reply.status == 200, reply.body
    return reply.json()["prompt_id"]


def pid_of(entry: dict[str, Any]) -> int:
    return entry["outputs"]["2"]["pid"][0]


def ok(entry: dict[str, Any]) -> bool:
    return entry["status"]["status_str"] == "success"


def wait_running(server: LiveServer, prompt_id: str, timeout: float = 60) -> dict[str, Any]:
    """The worker (``runtime.workers()`` row) running ``prompt_id``, once it has started."""
    deadline = time.monotonic() + timeout
    runtime = server.state.runtime
    while time.monotonic() < deadline:
        for slot in runtime.slots:
            running = slot.running
            if running is not None and running.item.prompt_id == prompt_id and running.node:
                return slot.describe()
        time.sleep(0.02)
    raise TimeoutError(f"{prompt_id} never started")


@pytest.fixture(scope="module")
def pool_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One pool of two local workers for the module (starting workers takes seconds)."""
    base = tmp_path_factory.mktemp("pool")
    config = ServerConfig(host="127.0.0.1", port=0, base_dir=base, device="cpu",
                          registry_factory=POOL_REGISTRY, workers=2, interrupt_grace=2.0,
                          workflows_dir=base / "workflows", web_dir=base / "web-dist")
    srv = InProcessServer(config)
    try:
        assert isinstance(srv.live.state.runtime, PoolRuntime)
        yield srv.live
    finally:
        srv.stop()


@pytest.fixture
def pool(pool_server: LiveServer) -> LiveServer:
    wait_idle(pool_server, 2)  # both workers up: a test that killed one waits here
    return pool_server


def wait_idle(server: LiveServer, count: int, timeout: float = 60) -> None:
    """Until ``count`` workers have started and wait for prompts."""
    deadline = time.monotonic() + timeout
    while sum(w["state"] == "idle" for w in server.state.runtime.workers()) < count:
        assert time.monotonic() < deadline, server.state.runtime.workers()
        time.sleep(0.05)


# --- routing, without workers -----------------------------------------------------------
def _item(n: int, client: str, prompt: dict[str, Any] | None = None) -> QueueItem:
    return QueueItem(n, f"p{n}", prompt or {}, {"client_id": client}, [], seq=abs(n))


def test_fair_share_round_robins_clients_after_the_front_of_the_queue():
    runtime = PoolRuntime.__new__(PoolRuntime)
    runtime._served, runtime._ticks = {}, iter(range(1, 1000))
    pending = [_item(1, "a"), _item(2, "a"), _item(3, "a"), _item(4, "b"), _item(5, "c")]
    order = []
    while pending:
        item, client = runtime._fair(pending)
        runtime._served[client] = next(runtime._ticks)  # taken: the client had its turn
        order.append(item.prompt_id)
        pending.remove(item)
    assert order == ["p1", "p4", "p5", "p2", "p3"]
    front = [_item(2, "a"), _item(-9, "a")]
    front.sort(key=lambda i: i.number)
    assert runtime._fair(front)[0].prompt_id == "p-9"  # queued at the front: first


def test_route_prefers_a_warm_worker_else_the_least_loaded():
    a, b, c = Slot(0), Slot(1), Slot(2)
    a.models, b.models = {"ckpt_name=x"}, {"ckpt_name=y", "lora_name=l"}
    item = _item(1, "a", probe(ckpt="y"))
    assert PoolRuntime._route(item, [a, b, c]) is b
    assert PoolRuntime._route(_item(2, "a", probe(ckpt="z")), [a, b, c]) is c
    assert PoolRuntime._route(_item(3, "a", probe()), [a, b]) is a


# --- a live pool of two local workers ------------------------------------------------------
@pytest.mark.slow
def test_prompts_run_on_both_workers_and_all_reach_the_history(pool: LiveServer, loop):
    http = Http(pool.url, loop)
    ids = [submit(http, probe(steps=5, seed=i), client=f"c{i % 3}") for i in range(20)]
    history = wait_history(http, ids, timeout=120)
    assert all(ok(history[p]) for p in ids), [history.get(p) for p in ids]
    assert len({pid_of(history[p]) for p in ids}) == 2  # both workers took prompts
    assert http.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    http.close()


@pytest.mark.slow
def test_a_prompt_goes_to_the_worker_that_holds_its_model(pool: LiveServer, loop):
    http = Http(pool.url, loop)
    pids = {}
    for n, ckpt in enumerate(["x.safetensors", "y.safetensors", "x.safetensors",
                              "y.safetensors"]):
        pid = submit(http, probe(seed=n, ckpt=ckpt))
        entry = wait_history(http, [pid])[pid]
        assert ok(entry), entry
        pids.setdefault(ckpt, []).append((pid_of(entry), entry))
    (x1, _), (x2, x2_entry) = pids["x.safetensors"]
    (y1, _), (y2, y2_entry) = pids["y.safetensors"]
    assert x1 == x2 and y1 == y2 and x1 != y1  # the cold model went to the other worker
    for entry in (x2_entry, y2_entry):  # and the warm one was not loaded again
        cached = [m[1]["nodes"] for m in entry["status"]["messages"]
                  if m[0] == "execution_cached"]
        assert cached and "1" in cached[0], entry["status"]["messages"]
    http.close()


@pytest.mark.slow
def test_a_busy_client_does_not_starve_another(pool: LiveServer, loop):
    http = Http(pool.url, loop)
    a = [submit(http, probe(steps=20, seed=i), client="a") for i in range(6)]
    b = [submit(http, probe(steps=20, seed=100 + i), client="b") for i in range(2)]
    history = wait_history(http, a + b, timeout=120)

    def started(pid: str) -> int:
        return next(m[1]["timestamp"] for m in history[pid]["status"]["messages"]
                    if m[0] == "execution_start")

    order = sorted(a + b, key=started)
    assert max(order.index(p) for p in b) <= 5, order  # not after all of a's
    http.close()


@pytest.mark.slow
def test_an_interrupt_reaches_the_worker_running_that_prompt(pool: LiveServer, loop):
    http = Http(pool.url, loop)
    first = submit(http, probe(steps=3000, seed=1))
    second = submit(http, probe(steps=3000, seed=2))
    w1, w2 = wait_running(pool, first), wait_running(pool, second)
    assert w1["name"] != w2["name"]
    assert http.post("/interrupt", json={"prompt_id": second}).json() == {"interrupted": True}
    entry = wait_history(http, [second], timeout=30)[second]
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    running = [r[1] for r in http.get("/queue").json()["queue_running"]]
    assert running == [first]  # the other worker's prompt runs on
    assert http.post("/interrupt", json={"prompt_id": first}).json() == {"interrupted": True}
    assert wait_history(http, [first], timeout=30)[first]["status"]["status_str"] == "error"
    # cooperative interrupts: both workers live on
    assert {w["pid"] for w in pool.state.runtime.workers()} == {w1["pid"], w2["pid"]}
    http.close()


@pytest.mark.slow
def test_a_worker_killed_mid_prompt_has_it_finished_elsewhere(pool: LiveServer, loop):
    http = Http(pool.url, loop)
    pid = submit(http, probe(steps=300, seed=7))
    worker = wait_running(pool, pid)
    os.kill(worker["pid"], signal.SIGKILL)
    entry = wait_history(http, [pid], timeout=60)[pid]
    assert ok(entry), entry
    assert pid_of(entry) != worker["pid"]
    assert pool.state.queue.remaining() == 0
    wait_idle(pool, 2)  # the killed worker's slot came back
    http.close()


@pytest.mark.slow
def test_a_worker_that_dies_idle_is_replaced_before_it_gets_a_prompt(pool: LiveServer, loop):
    http = Http(pool.url, loop)
    old = {w["pid"] for w in pool.state.runtime.workers()}
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    ids = [submit(http, probe(seed=500 + i)) for i in range(4)]
    history = wait_history(http, ids, timeout=90)
    assert all(ok(history[p]) for p in ids), [history.get(p) for p in ids]
    assert not {pid_of(history[p]) for p in ids} & old
    http.close()


@pytest.mark.slow
def test_a_prompt_that_kills_every_worker_fails_after_max_attempts(pool: LiveServer, loop):
    http = Http(pool.url, loop)
    pid = submit(http, {"1": {"class_type": "TestCrash", "inputs": {"sig": "SIGKILL"}}})
    entry = wait_history(http, [pid], timeout=120)[pid]
    assert entry["status"]["status_str"] == "error"
    last = entry["status"]["messages"][-1]
    assert last[0] == "execution_error" and last[1]["exception_type"] == "WorkerDied"
    assert "3 time(s)" in last[1]["exception_message"], last
    nxt = submit(http, probe())
    assert ok(wait_history(http, [nxt], timeout=60)[nxt])
    http.close()


@pytest.mark.slow
def test_head_killed_mid_run_then_restarted_runs_everything_once(tmp_path, loop):
    first = SubprocessServer(tmp_path, None, "--workers", "2")
    try:
        first.wait_ready()
        http = Http(first.url, loop)
        ids = [http.post("/prompt", json={"prompt": slow(150, value=i)}).json()["prompt_id"]
               for i in range(6)]
        deadline = time.monotonic() + 60
        while len(http.get("/queue").json()["queue_running"]) < 2:
            assert time.monotonic() < deadline, "the pool never ran two prompts at once"
            time.sleep(0.02)
        first.kill()  # the head: its workers die with it
        http.close()
    finally:
        first.stop()
    second = SubprocessServer(tmp_path, first.port, "--workers", "2")
    try:
        second.wait_ready()
        http = Http(second.url, loop)
        history = wait_history(http, ids, timeout=90)
        assert all(ok(history[p]) for p in ids), history
        assert http.get("/queue").json() == {"queue_running": [], "queue_pending": []}
        http.close()
    finally:
        output = second.stop()
    assert "Traceback" not in output, output


def test_a_pool_whose_workers_cannot_start_fails_prompts_with_the_cause(make_server, loop):
    server = make_server(workers=2, worker_module="tests.server.no_such_worker",
                         registry_factory=POOL_REGISTRY)
    http = Http(server.url, loop)
    pid = http.post("/prompt", json={"prompt": probe()}).json()["prompt_id"]
    entry = wait_history(http, [pid], timeout=60)[pid]
    error = entry["status"]["messages"][-1][1]
    assert entry["status"]["status_str"] == "error"
    assert error["exception_type"] == "WorkerUnavailable"
    assert "exited with code" in error["exception_message"], error
    http.close()


# --- the worker port: only workers that know the secret get in ---------------------------
def test_the_worker_port_admits_only_workers_that_know_the_secret():
    from steerflow.worker import connect

    listener = WorkerListener("127.0.0.1", 0, "s3cret")
    try:
        intruder = connect(listener.host, listener.port, "w9", "guess")
        with pytest.raises(WorkerDied):
            listener.wait("w9", timeout=1.0)
        with pytest.raises((EOFError, OSError)):  # the head hung up on it
            intruder.recv_bytes()
        worker = connect(listener.host, listener.port, "w1", "s3cret")
        conn, hello = listener.wait("w1", timeout=10)
        assert hello["pid"] == os.getpid()
        conn.send_bytes(b'{"op": "ping"}')
        assert worker.recv_bytes() == b'{"op": "ping"}'
        conn.close()
        worker.close()
    finally:
        listener.close()


def test_output_files_and_model_keys_in_the_protocol():
    raw = encode_file({"type": "output", "subfolder": "a", "filename": "x.png"}, b"\n\x89PNG")
    msg = decode(raw)
    assert msg.op == "file" and msg.data["filename"] == "x.png" and msg.payload == b"\n\x89PNG"
    assert prompt_models(probe(ckpt="m.safetensors")) == ["ckpt_name=m.safetensors"]
    assert prompt_models({"1": {"inputs": {"lora_name": "", "x_name": 3}}}) == []
