"""``serve --workers N``: a pool of local workers behind the one queue (server/pool.py)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from server.config import ServerConfig
from server.hosts import Slot
from server.pool import RETRY_MESSAGE, PoolRuntime, _model_keys
from server.prompt_queue import Pending, PromptQueue, QueueItem
from server.state import STATE
from server.storage import Storage
from server.worker import (
    RemoteWorker,
    WorkerDied,
    WorkerListener,
    decode,
    encode_file,
    prompt_files,
    prompt_models,
)
from tests.server.helpers import (
    REPO,
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


def png(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def upload_form(data: bytes, filename: str, **fields: str) -> aiohttp.FormData:
    body = aiohttp.FormData()
    body.add_field("image", data, filename=filename, content_type="image/png")
    for key, value in fields.items():
        body.add_field(key, value)
    return body


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


def _queue(tmp_path: Path, items: list[QueueItem]) -> PromptQueue:
    queue = PromptQueue(Storage(tmp_path / "q.sqlite"))
    for item in items:
        queue.put(item)
    return queue


def test_submission_order_by_default_as_comfyui(tmp_path):
    """Without --fair-queue prompts run by number, front first, whoever queued them:
    the order /queue shows and ComfyUI keeps."""
    runtime = PoolRuntime.__new__(PoolRuntime)
    runtime._served, runtime.config = {}, SimpleNamespace(fair_queue=False)
    queue = _queue(tmp_path, [_item(1, "a"), _item(2, "a"), _item(3, "b"), _item(-9, "c")])
    order = [queue.take_pick(lambda p: runtime._fair(p)[0], timeout=0).prompt_id
             for _ in range(4)]
    assert order == ["p-9", "p1", "p2", "p3"]


def test_fair_share_round_robins_clients_after_the_front_of_the_queue(tmp_path):
    runtime = PoolRuntime.__new__(PoolRuntime)
    runtime._served, runtime._ticks = {}, iter(range(1, 1000))
    runtime.config = SimpleNamespace(fair_queue=True)  # --fair-queue
    queue = _queue(tmp_path, [_item(1, "a"), _item(2, "a"), _item(3, "a"), _item(4, "b"),
                              _item(5, "c"), _item(-9, "c")])

    def pick(pending: Pending) -> QueueItem:
        item, client = runtime._fair(pending)
        runtime._served[client] = next(runtime._ticks)  # taken: the client had its turn
        return item

    order = [queue.take_pick(pick, timeout=0).prompt_id for _ in range(6)]
    # queued at the front first; then clients take turns, each in its own order
    assert order == ["p-9", "p1", "p4", "p5", "p2", "p3"]
    assert queue.take_pick(pick, timeout=0) is None


def test_pending_view_skips_taken_deleted_and_requeued_prompts(tmp_path):
    queue = _queue(tmp_path, [_item(n, "ab"[n % 2]) for n in range(1, 7)])
    first = queue.take_pick(lambda pending: pending.head(), timeout=0)
    assert first.prompt_id == "p1" and first.attempts == 1
    assert queue.delete(["p2", "p4"]) == 2
    seen: dict[str | None, str] = {}

    def look(pending: Pending) -> None:
        seen.update({c: i.prompt_id for c, i in pending.heads().items()})
        seen["head"] = pending.head().prompt_id
        return None

    assert queue.take_pick(look, timeout=0) is None
    assert seen == {"head": "p3", "a": "p6", "b": "p3"}
    queue.requeue(first)  # back in front of its client, attempt refunded
    assert queue.take_pick(look, timeout=0) is None
    assert seen == {"head": "p1", "a": "p6", "b": "p1"} and first.attempts == 0
    assert [queue.take_pick(lambda p: p.head(), timeout=0).prompt_id for _ in range(4)] \
        == ["p1", "p3", "p5", "p6"]
    assert queue.remaining() == 4 and queue.snapshot()[1] == []


def test_an_end_the_database_refuses_stays_queued_and_is_written_once_it_can_be(
        tmp_path, monkeypatch):
    """A full disk when a prompt ends: it dropped out of both /queue and /history, and
    the next start ran it again. It now stays queued as running, its entry held and
    written again until the database takes it."""
    import sqlite3

    import server.prompt_queue as pq

    monkeypatch.setattr(pq, "UNSAVED_RETRY_FIRST", 0.05)
    queue = _queue(tmp_path, [_item(1, "a"), _item(2, "a")])
    item = queue.take_pick(lambda pending: pending.head(), timeout=0)
    write = queue.storage.finish
    refusals = [0]

    def full(*args):
        if refusals[0] < 3:
            refusals[0] += 1
            raise sqlite3.OperationalError("database or disk is full")
        return write(*args)

    monkeypatch.setattr(queue.storage, "finish", full)
    changes: list[int] = []
    queue.on_change = lambda: changes.append(queue.remaining())
    queue.finish(item, {"outputs": {}, "status": {"status_str": "success"}})  # no raise
    running, pending = queue.snapshot()
    assert [r[1] for r in running] == ["p1"] and [p[1] for p in pending] == ["p2"]
    assert "p1" not in dict(queue.storage.history())
    deadline = time.monotonic() + 10
    while "p1" in queue and time.monotonic() < deadline:
        time.sleep(0.02)
    assert refusals[0] == 3 and "p1" in dict(queue.storage.history())
    assert queue.snapshot()[0] == [] and changes[-1] == 1  # p2 is left
    queue.close()


def test_routing_counts_model_file_inputs_only():
    """The soak drill: ``sampler_name=euler`` counted as a model, so a prompt went to the
    worker that had run euler, not to the one that held its checkpoint."""
    prompt = {
        "3": {"class_type": "KSampler", "inputs": {"sampler_name": "euler", "seed": 1,
                                                   "scheduler": "normal"}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "shapes"}},
        "5": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "a.safetensors",
                                                         "clip_name2": "b.safetensors"}},
        "6": {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": "ip.bin"}},
        "7": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "x2.pth"}},
        "8": {"class_type": "LoraLoader", "inputs": {"lora_name": "l.safetensors",
                                                     "model": ["4", 0]}},
        "9": {"class_type": "TrainLoraNode", "inputs": {"save_name": "mine",
                                                        "filename_prefix": "x"}},
        "10": {"class_type": "SamplerCustom", "inputs": {"scheduler_name": "karras"}}}
    assert prompt_models(prompt) == [
        "ckpt_name=shapes", "clip_name1=a.safetensors", "clip_name2=b.safetensors",
        "ipadapter_file=ip.bin", "lora_name=l.safetensors", "model_name=x2.pth"]
    w0, w1 = Slot(0), Slot(1)
    # what the workers report is filtered the same way (a worker of another version)
    w0.models = _model_keys(["ckpt_name=shapes.safetensors", "sampler_name=euler"])
    w1.models = _model_keys(["ckpt_name=shapes", "sampler_name=dpmpp_2m"])
    assert w0.models == {"ckpt_name=shapes.safetensors"}
    p3 = {"4": prompt["4"], "3": prompt["3"]}  # the folder checkpoint, with euler
    assert PoolRuntime._route(_item(3, "a", p3), [w0, w1]) is w1


def test_the_history_keeps_exactly_max_history_entries(tmp_path):
    """Pruned every 100 finishes, the history ran up to 99 past its cap."""
    import threading

    runtime = PoolRuntime.__new__(PoolRuntime)
    runtime.queue = _queue(tmp_path, [])
    runtime.config = ServerConfig(max_history=10)
    runtime._history_lock = threading.Lock()
    storage = runtime.queue.storage
    for n in range(1, 14):
        storage.finish(f"p{n}", n, {"outputs": {}, "status": {"status_str": "success"}})
        runtime._after_finish()
        assert storage.history_jobs(None, 0, 0)[0] == min(n, 10)
    assert [pid for pid, _ in storage.history()] == [f"p{n}" for n in range(4, 14)]
    storage.delete_history(["p13", "p12"])  # a user's deletes: nothing more goes
    runtime._after_finish()
    assert storage.history_jobs(None, 0, 0)[0] == 8
    runtime.queue.close()


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
def test_a_busy_client_does_not_starve_another(pool: LiveServer, loop, monkeypatch):
    monkeypatch.setattr(pool.state.runtime.config, "fair_queue", True)  # --fair-queue
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
    # the client can tell that it ran again, and why (ComfyUI's message shape)
    [retry] = [m for m in entry["status"]["messages"] if m[0] == RETRY_MESSAGE]
    assert retry[1]["prompt_id"] == pid and retry[1]["attempt"] == 1, retry
    assert retry[1]["node_id"] == "2" and "SIGKILL" in retry[1]["message"], retry
    assert entry["status"]["messages"].index(retry) == 0  # before the run that finished
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


def _worker(server: LiveServer, name: str) -> dict[str, Any]:
    return next(w for w in server.state.runtime.workers() if w["name"] == name)


@pytest.mark.slow
def test_an_idle_worker_killed_is_logged_shown_dead_and_its_temp_files_removed(
        pool: LiveServer, loop, caplog):
    """The fault drill: an idle worker's death was not logged, /system_stats showed the
    killed pid while the new worker started, and a save it was killed in left its
    ``.<name>.<token>.tmp`` in output/ for an hour, across restarts."""
    caplog.set_level(logging.INFO, logger="server")
    victim = pool.state.runtime.workers()[0]
    out = pool.base_dir / "output"
    out.mkdir(exist_ok=True)
    (out / "sub").mkdir(exist_ok=True)
    its = [out / f".big.{victim['pid']}.0badf00d.tmp", out / "sub" / f".x.{victim['pid']}.tmp"]
    others = [out / f".big.{os.getpid()}.0badf00d.tmp", out / f"big.{victim['pid']}.png"]
    for path in its + others:
        path.write_bytes(b"half")
    os.kill(victim["pid"], signal.SIGKILL)
    seen = set()
    deadline = time.monotonic() + 60
    while True:
        w = _worker(pool, victim["name"])
        seen.add((w["state"], w["pid"]))
        if w["state"] == "idle" and w["pid"] != victim["pid"]:
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.01)
    assert ("starting", victim["pid"]) not in seen, seen  # the live pid, or None
    assert any(state == "starting" for state, _ in seen), seen
    lines = [r.getMessage() for r in caplog.records if "ended while idle" in r.getMessage()]
    assert lines and f"pid {victim['pid']}" in lines[0] and "SIGKILL" in lines[0], lines
    deadline = time.monotonic() + 10
    while any(p.exists() for p in its):
        assert time.monotonic() < deadline, [p for p in its if p.exists()]
        time.sleep(0.05)
    assert all(p.exists() for p in others)
    for path in others:
        path.unlink()


@pytest.mark.slow
def test_a_prompt_its_worker_never_acknowledged_costs_no_attempt(pool: LiveServer, loop,
                                                                caplog):
    """The fault drill: a worker killed idle got the next prompt (sent into its socket
    while it died), and that prompt was charged one of its 3 attempts."""
    caplog.set_level(logging.WARNING, logger="server.pool")
    http = Http(pool.url, loop)
    workers = pool.state.runtime.workers()
    for w in workers:  # neither reads the run: it stays unacknowledged
        os.kill(w["pid"], signal.SIGSTOP)
    try:
        pid = submit(http, probe(seed=900))
        deadline = time.monotonic() + 30
        while not (taken := [s for s in pool.state.runtime.slots
                             if s.job is not None and s.job.prompt_id == pid]):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)  # the run is sent
        victim = next(w["pid"] for w in workers if w["name"] == taken[0].name)
        os.kill(victim, signal.SIGKILL)
    finally:
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w["pid"], signal.SIGCONT)
    entry = wait_history(http, [pid], timeout=60)[pid]
    assert ok(entry), entry
    assert pid_of(entry) != victim
    assert not [m for m in entry["status"]["messages"] if m[0] == RETRY_MESSAGE]
    lines = [r.getMessage() for r in caplog.records if pid in r.getMessage()]
    assert lines and all("no attempt counted" in line for line in lines), lines
    http.close()


def test_a_prompt_that_crashes_its_worker_before_acknowledging_it_still_ends(tmp_path):
    """Not counted as attempts, deaths before the acknowledgement still end a prompt
    that causes them (a pack's validation that crashes the worker): after
    max_attempts in a row it is failed with the cause."""
    runtime = PoolRuntime.__new__(PoolRuntime)
    runtime.queue = _queue(tmp_path, [_item(1, "a")])
    runtime._unacked, runtime._retry_notes = OrderedDict(), OrderedDict()
    runtime._pool = threading.Lock()
    runtime._local = threading.local()
    failed: list[str] = []
    runtime._record_failure = lambda item, text, *a, **k: failed.append(text)
    cause = "the worker process was killed by SIGSEGV"
    for _ in range(3):
        item = runtime.queue.take_pick(lambda pending: pending.head(), timeout=0)
        assert item is not None and item.attempts == 1  # the earlier ones refunded
        runtime._lost_unacknowledged(Slot(0), item, cause, [])
    assert failed == [f"{cause} before it acknowledged this prompt, 3 time(s) in a row; "
                      "giving up on it"]
    assert runtime.queue.remaining() == 1  # taken, its end left to _record_failure
    runtime.queue.close()


@pytest.mark.slow
def test_a_prompt_that_kills_every_worker_fails_after_max_attempts(pool: LiveServer, loop):
    http = Http(pool.url, loop)
    pid = submit(http, {"1": {"class_type": "TestCrash", "inputs": {"sig": "SIGKILL"}}})
    entry = wait_history(http, [pid], timeout=120)[pid]
    assert entry["status"]["status_str"] == "error"
    last = entry["status"]["messages"][-1]
    assert last[0] == "execution_error" and last[1]["exception_type"] == "WorkerDied"
    assert "3 time(s)" in last[1]["exception_message"], last
    retries = [m[1] for m in entry["status"]["messages"] if m[0] == RETRY_MESSAGE]
    assert [r["attempt"] for r in retries] == [1, 2], retries
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


def test_a_pool_whose_workers_cannot_start_fails_prompts_with_the_cause(make_server, loop,
                                                                        quick_start_retries):
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


# --- a remote worker (TCP, as a Ray actor) with folders of its own ------------------------
REMOTE_REGISTRY = "tests.server.remote_pack:make_registry"
REMOTE_SECRET = "remote-test-secret"
_CONNECT = ("import sys; from steerflow.worker import connect, serve_channel; "
            "sys.exit(serve_channel(connect(sys.argv[1], int(sys.argv[2]), sys.argv[3], "
            "sys.argv[4])))")


class TcpHost:
    """Remote workers without Ray: processes that connect to the head's worker port as a
    Ray actor does (steerflow.ray_worker), each with a base folder of its own."""

    kind = "tcp"

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.listener = WorkerListener("127.0.0.1", 0, REMOTE_SECRET)
        self.procs: list[subprocess.Popen[bytes]] = []

    def size(self) -> int:
        return 1

    def start(self, slot: Slot, config: dict[str, Any]) -> RemoteWorker:
        name = f"{slot.name}.{len(self.procs)}"
        proc = subprocess.Popen(
            [sys.executable, "-c", _CONNECT, self.listener.host, str(self.listener.port), name,
             REMOTE_SECRET], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        conn, hello = self.listener.wait(name, 120, lambda: proc.poll() is None)
        cfg = {**config, "send_outputs": True, "base_dir": str(self.base_dir), "models_dir": None}
        return RemoteWorker(conn, cfg, pid=int(hello["pid"]), name=name, kill=proc.kill,
                            kind=self.kind)

    def close(self) -> None:
        self.listener.close()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def remote_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A head whose one worker is remote: its base folder is not the head's."""
    base = tmp_path_factory.mktemp("head")
    host = TcpHost(tmp_path_factory.mktemp("node"))
    config = ServerConfig(host="127.0.0.1", port=0, base_dir=base, device="cpu",
                          registry_factory=REMOTE_REGISTRY, workers=2, interrupt_grace=2.0,
                          workflows_dir=base / "workflows", web_dir=base / "web-dist")

    def use_host(app: Any) -> None:
        app[STATE].runtime.host = host

    srv = InProcessServer(config, setup_app=use_host)
    try:
        wait_idle(srv.live, 1, timeout=120)
        yield srv.live
    finally:
        srv.stop()


def load_image(name: str) -> dict[str, Any]:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "TestImageInfo", "inputs": {"image": ["1", 0]}}}


def test_a_remote_worker_gets_the_uploaded_images_a_prompt_loads(remote_server, loop):
    http = Http(remote_server.url, loop)
    node_input = remote_server.state.runtime.host.base_dir / "input"
    up = http.post("/upload/image", data=upload_form(png((10, 20, 30), (5, 3)), "cat.png",
                                                      subfolder="pets"))
    assert up.status == 200, up.body
    name = "pets/cat.png"
    assert not (node_input / name).exists()
    first = submit(http, load_image(name))
    entry = wait_history(http, [first], timeout=60)[first]
    assert ok(entry), entry["status"]
    out = entry["outputs"]["2"]
    assert out["size"] == [[3, 5]] and out["pixel"] == [[10, 20, 30]]
    assert out["pid"][0] != os.getpid()  # it ran in the remote worker
    assert (node_input / name).read_bytes() == (remote_server.base_dir / "input" / name
                                                ).read_bytes()
    # Sent once per worker; again after a re-upload with other bytes (same name).
    slot = remote_server.state.runtime.slots[0]
    assert ("input", name) in slot.sent
    again = submit(http, load_image(name))
    assert ok(wait_history(http, [again], timeout=60)[again])
    up = http.post("/upload/image", data=upload_form(png((200, 100, 0), (5, 3)), "cat.png",
                                                      subfolder="pets", overwrite="true"))
    assert up.status == 200, up.body
    third = submit(http, load_image(name))
    entry = wait_history(http, [third], timeout=60)[third]
    assert ok(entry) and entry["outputs"]["2"]["pixel"] == [[200, 100, 0]], entry
    http.close()


def test_a_remote_worker_is_never_sent_a_file_outside_the_input_folder(remote_server, loop):
    http = Http(remote_server.url, loop)
    secret = remote_server.base_dir / "secret.png"
    secret.write_bytes(png((1, 1, 1), (2, 2)))
    reply = http.post("/prompt", json={"prompt": load_image("../secret.png")})
    assert reply.status == 400, reply.body  # the head refuses it
    node = remote_server.state.runtime.host.base_dir
    assert not (node / "secret.png").exists()
    assert not any(p.name == "secret.png" for p in node.rglob("*"))
    http.close()


def test_prompt_files_names_only_files_confined_to_their_folders(tmp_path):
    from engine.environment import Environment

    env = Environment.create(tmp_path / "head", device="cpu")
    for role in ("input", "output", "temp"):
        env.folder(role, create=True)
    (env.folder("input") / "a.png").write_bytes(b"a")
    (env.folder("input", "batch", create=True) / "1.png").write_bytes(b"1")
    (env.folder("input") / "batch" / ".hidden.png").write_bytes(b"h")
    (env.folder("output") / "o.png").write_bytes(b"o")
    (tmp_path / "head" / "secret.png").write_bytes(b"s")
    (env.folder("input") / "link.png").symlink_to(tmp_path / "head" / "secret.png")
    prompt = {"1": {"class_type": "X", "inputs": {
        "image": "a.png", "other": "o.png [output]", "folder": "batch",
        "lines": "a.png\n../secret.png\n/etc/passwd", "link": "link.png", "up": "..",
        "root": ".", "none": "", "edge": ["2", 0], "text": "a photo of a cat",
        "annotated": "sub/../a.png [input]"}}}
    assert set(prompt_files(prompt, env)) == {
        ("input", "a.png"), ("output", "o.png"), ("input", "batch/1.png")}


def test_system_stats_lists_each_worker_with_its_host_state_and_models(remote_server, loop):
    http = Http(remote_server.url, loop)
    first = submit(http, probe(ckpt="m.safetensors"))
    assert ok(wait_history(http, [first], timeout=60)[first])
    busy = submit(http, probe(steps=3000, seed=3))
    wait_running(remote_server, busy)
    stats = http.get("/system_stats").json()
    assert set(stats) >= {"system", "devices", "workers"}
    [worker] = stats["workers"]
    assert worker["host"] == "tcp" and worker["device"] == "cpu" and worker["pid"] > 0
    assert worker["state"] == "busy" and worker["prompt_id"] == busy
    assert "ckpt_name=m.safetensors" in worker["models"]
    http.post("/interrupt", json={"prompt_id": busy})
    wait_history(http, [busy], timeout=30)
    wait_idle(remote_server, 1)
    [worker] = http.get("/system_stats").json()["workers"]
    assert worker["state"] == "idle" and worker["prompt_id"] is None
    http.close()


def test_system_stats_lists_the_single_worker(make_server, loop):
    server = make_server(registry_factory=POOL_REGISTRY)
    http = Http(server.url, loop)
    pid = submit(http, probe(ckpt="m.safetensors"))
    assert ok(wait_history(http, [pid], timeout=60)[pid])
    [worker] = http.get("/system_stats").json()["workers"]
    assert worker["host"] == "local" and worker["state"] == "idle"
    assert worker["pid"] == pid_of(wait_history(http, [pid])[pid]) and worker["device"] == "cpu"
    http.close()
