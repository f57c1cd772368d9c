"""ComfyUI's protocol end to end: /prompt, websocket events, /history, /view, /queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import websocket

from tests.server.helpers import (
    REPO,
    Http,
    LiveServer,
    chain,
    image,
    recv_until,
    slow,
    wait_history,
)

SHARED_SERVER = True  # one server for the module (conftest.py); make_server for a fresh one


def test_round_trip_prompt_events_history_view(server: LiveServer, http: Http):
    ws = server.connect_ws("client-a")
    reply = http.post("/prompt", json={"prompt": image(value=9), "client_id": "client-a"})
    assert reply.status == 200
    body = reply.json()
    assert body["node_errors"] == {} and isinstance(body["number"], int)
    events, _ = recv_until(ws, body["prompt_id"])
    names = [e["type"] for e in events]
    assert names == ["execution_start", "execution_cached", "executing", "executed",
                     "execution_success", "executing"]
    assert events[2]["data"]["node"] == "1" and events[-1]["data"]["node"] is None
    history = http.get(f"/history/{body['prompt_id']}").json()
    entry = history[body["prompt_id"]]  # already written when executing/None arrived
    assert entry["status"] == {"status_str": "success", "completed": True,
                               "messages": entry["status"]["messages"]}
    assert [m[0] for m in entry["status"]["messages"]] == [
        "execution_start", "execution_cached", "execution_success"]
    assert entry["prompt"][1] == body["prompt_id"] and entry["prompt"][4] == ["1"]
    picture = entry["outputs"]["1"]["images"][0]
    assert picture == events[3]["data"]["output"]["images"][0]
    view = http.get("/view", params=picture)
    assert view.status == 200 and view.body.startswith(b"\x89PNG")
    assert view.headers["Content-Type"] == "image/png"
    assert view.headers["X-Content-Type-Options"] == "nosniff"
    assert view.headers["Content-Disposition"].startswith("inline; filename=")
    webp = http.get("/view", params={**picture, "preview": "webp;50"})
    assert webp.status == 200 and webp.headers["Content-Type"] == "image/webp"
    assert webp.body[8:12] == b"WEBP"
    ws.close()


def test_status_comes_when_a_prompt_is_queued_before_it_starts(server: LiveServer,
                                                               http: Http):
    """ComfyUI sends ``status`` as a prompt is queued (queue_remaining counts it), so
    clients see the queue grow before ``execution_start``, and 0 again after the end."""
    ws = server.connect_ws("status-order")
    pid = http.post("/prompt", json={"prompt": image(value=11), "client_id": "status-order"}
                    ).json()["prompt_id"]
    seen: list[tuple[str, Any]] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        opcode, data = ws.recv_data()
        if opcode != websocket.ABNF.OPCODE_TEXT:
            continue
        msg = json.loads(data)
        if msg["type"] == "status":
            seen.append(("status", msg["data"]["status"]["exec_info"]["queue_remaining"]))
        elif msg["data"].get("prompt_id") == pid:
            seen.append((msg["type"], msg["data"].get("node", "")))
        if ("status", 0) in seen and ("executing", None) in seen:
            break
    assert seen[0] == ("status", 1), seen
    assert seen.index(("status", 1)) < seen.index(("execution_start", ""))
    # ComfyUI's end: execution_success, the queue's status, then executing None
    assert (seen.index(("execution_success", "")) < seen.index(("status", 0))
            < seen.index(("executing", None))), seen
    ws.close()


class Recorder:
    """A websocket client stand-in for the hub: keeps the frames queued for it."""

    def __init__(self, features: dict[str, Any] | None = None) -> None:
        self.features = features
        self.frames: list[bytes] = []

    def queue(self, frame: bytes) -> None:
        self.frames.append(frame)

    def flush(self) -> None:
        pass

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(f[f.index(b"{"):]) for f in self.frames]


@contextlib.contextmanager
def attached_loop(hub: Any) -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh event loop for ``hub`` to deliver on, closed after the block."""
    loop = asyncio.new_event_loop()
    hub.attach(loop)
    try:
        yield loop
    finally:
        loop.close()


def test_hub_sends_a_status_at_once_in_order_and_coalesces_a_burst():
    """The first queue change goes out before the events posted after it (a coalescing
    delay had put it after ``execution_start`` when the worker was idle); each status
    carries the count when the queue changed, not when it is sent (read late, it had
    said 0 before the ``execution_start`` of a prompt that ended meanwhile); statuses
    next to each other in one batch go out as the latest."""
    from server.ws import Hub

    remaining = [1]
    hub = Hub(lambda: remaining[0])
    client = Recorder()
    hub.clients["c"] = client  # type: ignore[assignment]
    with attached_loop(hub) as loop:
        hub.status_changed()
        hub.post_event(None, "execution_start", {"prompt_id": "p"})
        loop.run_until_complete(asyncio.sleep(0))
        remaining[0] = 3
        hub.status_changed()
        hub.status_changed()
        loop.run_until_complete(asyncio.sleep(0.01))
    kinds = [(m["type"], m["data"].get("status")) for m in client.messages()]
    assert kinds == [("status", {"exec_info": {"queue_remaining": 1}}),
                     ("execution_start", None),
                     ("status", {"exec_info": {"queue_remaining": 3}})]
    def end_prompt() -> None:  # as the runtime ends one: the queue changes inside
        with hub.status_deferred():
            remaining[0] = 0
            hub.status_changed()
            hub.post_event(None, "execution_success", {"prompt_id": "p"})
        hub.post_event(None, "executing", {"node": None, "prompt_id": "p"})

    # a prompt's end: the status its change makes follows what the end posts
    client.frames.clear()
    with attached_loop(hub) as loop:
        loop.run_until_complete(asyncio.sleep(0.01))
        end_prompt()
        loop.run_until_complete(asyncio.sleep(0.01))
    assert [m["type"] for m in client.messages()] == [
        "execution_success", "status", "executing"]
    # every change in order, none held back: a prompt queued right after another's
    # status still hears of it before its ``execution_start``; and the end's status
    # follows what the end posted even while an earlier one is unsent
    client.frames.clear()
    with attached_loop(hub) as loop:
        remaining[0] = 1
        hub.status_changed()
        loop.run_until_complete(asyncio.sleep(0))
        remaining[0] = 2
        hub.status_changed()
        hub.post_event(None, "execution_start", {"prompt_id": "q"})
        loop.run_until_complete(asyncio.sleep(0))
        hub.status_changed()  # unsent when the block ends, and it says 2, not 0
        end_prompt()
        loop.run_until_complete(asyncio.sleep(0.01))
    assert [(m["type"], m["data"].get("status")) for m in client.messages()] == [
        ("status", {"exec_info": {"queue_remaining": 1}}),
        ("status", {"exec_info": {"queue_remaining": 2}}), ("execution_start", None),
        ("status", {"exec_info": {"queue_remaining": 2}}), ("execution_success", None),
        ("status", {"exec_info": {"queue_remaining": 0}}), ("executing", None)]


def test_the_last_status_sent_is_the_queue_as_it_is():
    """Two changes racing (a prompt's end in its runner's thread, a new prompt in the
    request's): a status reads the count under the queue's lock, so one read before the
    other change cannot be posted after it and leave clients a stale count."""
    from server.ws import Hub

    count = [0]
    slow = threading.Event()

    def remaining() -> int:
        value = count[0]
        if slow.is_set() and threading.current_thread().name == "ending":
            time.sleep(0.2)  # read, then overtaken before it is posted (were it unlocked)
        return value

    hub = Hub(remaining)
    client = Recorder()
    hub.clients["c"] = client  # type: ignore[assignment]
    slow.set()
    with attached_loop(hub) as loop:
        ending = threading.Thread(target=hub.status_changed, name="ending")
        with hub.queue_lock:  # the new prompt's change and status, as _put_many makes them
            ending.start()
            time.sleep(0.05)
            count[0] = 1
            hub.status_changed()
        ending.join(5)
        loop.run_until_complete(asyncio.sleep(0.01))
    counts = [m["data"]["status"]["exec_info"]["queue_remaining"] for m in client.messages()]
    assert counts and counts[-1] == 1, counts


def test_a_queued_prompts_status_is_posted_before_a_worker_can_take_it(tmp_path):
    """The queue tells of a new prompt before a waiting worker can take it: otherwise
    the worker's ``execution_start`` (and on a fast machine the prompt's whole run) could
    be posted before the status that counts it, as CI saw."""
    from server.prompt_queue import PromptQueue, QueueItem
    from server.storage import Storage

    seen: list[tuple[int, bool]] = []
    taken = threading.Event()

    def on_change() -> None:
        if not seen:
            time.sleep(0.1)  # time for a worker to take it, were it free to
            seen.append((queue.remaining(), taken.is_set()))

    queue = PromptQueue(Storage(tmp_path / "q.sqlite"), on_change=on_change)
    worker = threading.Thread(
        target=lambda: taken.set() if queue.take_pick(lambda p: p.head(),
                                                      timeout=10) else None)
    worker.start()
    time.sleep(0.05)  # the worker waits on the queue
    queue.put(QueueItem(1, "p1", {}, {}, [], seq=1))
    worker.join(10)
    assert taken.is_set() and seen == [(1, False)]


def test_preview_frames_are_binary_jpeg(server: LiveServer, http: Http):
    ws = server.connect_ws("viewer")
    pid = http.post("/prompt", json={"prompt": image(preview=True),
                                     "client_id": "viewer"}).json()["prompt_id"]
    _, frames = recv_until(ws, pid)
    assert frames, "no preview frame"
    event_type, image_type = struct.unpack(">II", frames[0][:8])
    assert (event_type, image_type) == (1, 1) and frames[0][8:11] == b"\xff\xd8\xff"
    ws.close()


def test_save_image_websocket_sends_png_frames(server: LiveServer, http: Http):
    """ComfyUI's websockets_api_example_ws_images.py: each binary frame's ``[8:]`` is a PNG."""
    import io

    from PIL import Image

    prompt = {"1": {"class_type": "TestImageTensor", "inputs": {"value": 40, "batch": 2}},
              "save_image_websocket_node": {"class_type": "SaveImageWebsocket",
                                            "inputs": {"images": ["1", 0]}}}
    ws = server.connect_ws("ws-images")
    for _ in range(2):  # never served from the cache: the same prompt sends its images again
        pid = http.post("/prompt", json={"prompt": prompt, "client_id": "ws-images"}
                        ).json()["prompt_id"]
        events, frames = recv_until(ws, pid)
        assert events[-2]["type"] == "execution_success"
        assert len(frames) == 2
        for i, out in enumerate(frames):
            assert struct.unpack(">II", out[:8]) == (1, 2)
            img = Image.open(io.BytesIO(out[8:]))  # exactly what the ComfyUI example does
            assert img.format == "PNG" and img.size == (8, 6)
            assert img.convert("RGB").getpixel((3, 2)) == (40 + i, 0, 0)
    ws.close()


def test_fully_cached_prompt_sends_executed_with_its_images(server: LiveServer, http: Http):
    """A client that shows results from ``executed`` sees a cached prompt's images too."""
    ws = server.connect_ws("cached-viewer")
    prompt = image(value=31)
    first = http.post("/prompt", json={"prompt": prompt, "client_id": "cached-viewer"}
                      ).json()["prompt_id"]
    events, _ = recv_until(ws, first)
    output = next(e for e in events if e["type"] == "executed")["data"]["output"]
    again = http.post("/prompt", json={"prompt": prompt, "client_id": "cached-viewer"}
                      ).json()["prompt_id"]
    events, _ = recv_until(ws, again)
    assert [e["type"] for e in events] == ["execution_start", "execution_cached", "executed",
                                           "execution_success", "executing"]
    assert events[1]["data"]["nodes"] == ["1"]
    assert events[2]["data"] == {"node": "1", "display_node": "1", "output": output,
                                 "prompt_id": again}
    ws.close()


def test_prompt_warnings_are_returned_and_the_prompt_runs(server: LiveServer, http: Http):
    """Validation warnings (an unknown input here; an unknown ``embedding:name`` in
    CLIPTextEncode) do not reject the prompt: they come back with its id."""
    prompt = chain(11)
    prompt["2"]["inputs"]["no_such_input"] = 1
    body = http.post("/prompt", json={"prompt": prompt}).json()
    assert body["node_errors"] == {}
    (warning,) = body["warnings"]
    assert (warning["kind"], warning["severity"], warning["node_id"]) == (
        "unknown_input", "warning", "2")
    history = wait_history(http, [body["prompt_id"]])
    assert history[body["prompt_id"]]["status"]["status_str"] == "success"
    plain = http.post("/prompt", json={"prompt": chain(12)}).json()
    assert "warnings" not in plain  # ComfyUI's reply, unchanged when there is nothing to say


def test_events_go_to_the_submitter_only(server: LiveServer, http: Http):
    mine, other = server.connect_ws("mine"), server.connect_ws("other")
    pid = http.post("/prompt", json={"prompt": chain(5), "client_id": "mine"}).json()["prompt_id"]
    recv_until(mine, pid)
    # Its client is not connected: dropped, never shown to another user.
    pid2 = http.post("/prompt", json={"prompt": chain(6), "client_id": "gone"}
                     ).json()["prompt_id"]
    # No client id: broadcast, like ComfyUI.
    pid3 = http.post("/prompt", json={"prompt": chain(7)}).json()["prompt_id"]
    events, _ = recv_until(other, pid3)
    seen = {e["data"].get("prompt_id") for e in events}
    assert pid3 in seen
    other.settimeout(0.5)
    with pytest.raises(websocket.WebSocketTimeoutException):
        while True:  # drain: nothing of pid or pid2 may ever reach "other"
            msg = json.loads(other.recv())
            assert msg["data"].get("prompt_id") not in (pid, pid2), msg
    mine.close()
    other.close()


def test_private_server_sends_no_events_of_anonymous_prompts(make_server, loop):
    server = make_server(token="t0ken")
    http = Http(server.url, loop, headers={"Authorization": "Bearer t0ken"})
    watcher = server.connect_ws("watcher", header=["Authorization: Bearer t0ken"])
    anonymous = http.post("/prompt", json={"prompt": chain(8)}).json()["prompt_id"]
    own = http.post("/prompt", json={"prompt": chain(9), "client_id": "watcher"}
                    ).json()["prompt_id"]
    seen = set()
    while True:  # every message up to the end of its own prompt, which ran second
        msg = json.loads(watcher.recv())
        seen.add(msg["data"].get("prompt_id"))
        if msg["type"] == "executing" and msg["data"] == {
                "node": None, "display_node": None, "prompt_id": own}:
            break
    assert own in seen and anonymous not in seen
    watcher.close()
    http.close()


def test_node_warnings_are_kept_in_the_history_entry(http: Http):
    """A warning (a training checkpoint that Stop could not save, say) outlives the live
    message: the history entry keeps it, in our key, out of ComfyUI's ``messages``
    (whose five event kinds ComfyUI's frontend checks), also when the prompt fails, and
    a flood of them is capped."""
    def run(**inputs: Any) -> dict[str, Any]:
        pid = http.post("/prompt", json={"prompt": {"1": {
            "class_type": "TestWarn", "inputs": {"text": "mind", **inputs}}}}
                        ).json()["prompt_id"]
        return wait_history(http, [pid])[pid]["status"]

    ok = run(times=2)
    assert ok["status_str"] == "success"
    assert ok["steerflow_warnings"] == [{"node": "1", "message": "mind 0"},
                                        {"node": "1", "message": "mind 1"}]
    assert {m[0] for m in ok["messages"]} <= {"execution_start", "execution_cached",
                                              "execution_success"}
    failed = run(times=1, fail=True)
    assert failed["status_str"] == "error"
    assert failed["steerflow_warnings"] == [{"node": "1", "message": "mind 0"}]
    flood = run(times=25)["steerflow_warnings"]
    assert len(flood) == 21 and flood[19]["message"] == "mind 19"
    assert flood[20] == {"node": None, "message": "and 5 more warning(s), not kept"}
    assert "steerflow_warnings" not in run(times=0)


def test_validation_failure_is_400_with_node_errors(http: Http):
    prompt = chain()
    prompt["1"]["inputs"]["value"] = 1000  # max is 100
    prompt["2"]["inputs"]["b"] = "two"  # an INT
    reply = http.post("/prompt", json={"prompt": prompt})
    assert reply.status == 400
    body = reply.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert set(body["error"]) == {"type", "message", "details", "extra_info"}
    # ComfyUI's error types (its front end knows only those); ours in extra_info
    first, second = body["node_errors"]["1"]["errors"][0], body["node_errors"]["2"]["errors"][0]
    assert first["type"] == "value_bigger_than_max"
    assert first["extra_info"]["steerflow_kind"] == "out_of_range"
    assert first["extra_info"]["received_value"] == 1000 and "value" in first["details"]
    assert second["type"] == "invalid_input_type"
    assert second["extra_info"]["steerflow_kind"] == "invalid_value"
    assert body["node_errors"]["1"]["class_type"] == "TestSource"
    assert body["node_errors"]["1"]["dependent_outputs"] == ["3"]  # as ComfyUI's
    prompt["4"] = {"class_type": "TestOut", "inputs": {"value": ["2", 0]}}  # needs node 2 too
    errors = http.post("/prompt", json={"prompt": prompt}).json()["node_errors"]
    assert errors["1"]["dependent_outputs"] == errors["2"]["dependent_outputs"] == ["3", "4"]
    for bad, kind in [({"nothing": 1}, "no_prompt"), ({"prompt": {}}, "invalid_prompt"),
                      ({"prompt": {"1": {"class_type": "Nope"}}}, "invalid_prompt"),
                      ({"prompt": chain(), "prompt_id": True}, "invalid_prompt_id"),
                      ({"prompt": chain(), "prompt_id": [5]}, "invalid_prompt_id"),
                      ({"prompt": chain(), "number": "x"}, "invalid_number")]:
        reply = http.post("/prompt", json=bad)
        assert reply.status == 400, bad
        assert reply.json()["error"]["type"] == kind, reply.json()
    # Nothing was queued by any of them.
    assert http.get("/prompt").json() == {"exec_info": {"queue_remaining": 0}}
    # a number as the id is its text, as ComfyUI's str(prompt_id) (the engine drill)
    reply = http.post("/prompt", json={"prompt": chain(), "prompt_id": 12345})
    assert reply.status == 200 and reply.json()["prompt_id"] == "12345", reply.json()
    assert "12345" in wait_history(http, ["12345"])


def test_valid_outputs_run_when_others_fail_validation(http: Http):
    """As ComfyUI: the outputs fed only by valid nodes are queued, and the 200 reply
    names the failing nodes; the prompt is refused only when no output is left."""
    prompt = chain()
    prompt["2"]["inputs"]["b"] = "two"
    prompt["4"] = {"class_type": "TestOut", "inputs": {"value": ["2", 0]}}
    prompt["5"] = {"class_type": "TestSource", "inputs": {"value": 7}}
    prompt["6"] = {"class_type": "TestOut", "inputs": {"value": ["5", 0]}}
    reply = http.post("/prompt", json={"prompt": prompt})
    assert reply.status == 200, reply.json()
    body = reply.json()
    assert set(body["node_errors"]) == {"2"}
    assert body["node_errors"]["2"]["dependent_outputs"] == ["3", "4"]
    assert body["node_errors"]["2"]["errors"][0]["type"] == "invalid_input_type"
    entry = wait_history(http, [body["prompt_id"]])[body["prompt_id"]]
    assert entry["status"]["status_str"] == "success"
    assert set(entry["outputs"]) == {"6"} and entry["prompt"][4] == ["6"]
    # An error of the prompt as a whole still refuses it all, as in ComfyUI.
    prompt["7"] = {"class_type": "NoSuchNode", "inputs": {}}
    reply = http.post("/prompt", json={"prompt": prompt})
    assert reply.status == 400 and reply.json()["error"]["type"] == "invalid_prompt"


def test_body_is_json_whatever_the_content_type(http: Http):
    reply = http.post("/api/prompt", data=json.dumps({"prompt": chain()}),
                      headers={"Content-Type": "text/plain"})
    assert reply.status == 200 and reply.json()["prompt_id"]


def test_queue_listing_front_delete_clear_and_interrupt(server: LiveServer, http: Http):
    ws = server.connect_ws("q")
    running = http.post("/prompt", json={"prompt": slow(100000), "client_id": "q"}
                        ).json()["prompt_id"]
    _wait_progress(ws, running)  # running before the others arrive (the worker may start)
    ids = [http.post("/prompt", json={"prompt": chain(i)}).json()["prompt_id"]
           for i in range(3)]
    front = http.post("/prompt", json={"prompt": chain(50), "front": True}).json()
    assert front["number"] < 0
    queue = http.get("/queue").json()
    assert [item[1] for item in queue["queue_running"]] == [running]
    assert [item[1] for item in queue["queue_pending"]] == [front["prompt_id"], *ids]
    assert len(queue["queue_pending"][0]) == 5  # number, id, prompt, extra_data, outputs
    assert http.get("/prompt").json()["exec_info"]["queue_remaining"] == 5
    assert http.post("/queue", json={"delete": [ids[0]]}).status == 200
    assert http.post("/queue", json={"clear": True}).status == 200
    assert http.get("/queue").json()["queue_pending"] == []
    # Interrupting another prompt id does nothing; ours stops within a step.
    assert http.post("/interrupt", json={"prompt_id": "not-running"}).json() == {
        "interrupted": False}
    start = time.monotonic()
    assert http.post("/interrupt", json={"prompt_id": running}).status == 200
    events, _ = recv_until(ws, running)
    assert time.monotonic() - start < 2.0
    assert [e["type"] for e in events][-2:] == ["execution_interrupted", "executing"]
    entry = wait_history(http, [running])[running]
    assert entry["status"]["status_str"] == "error" and not entry["status"]["completed"]
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    ws.close()


def test_interrupt_without_body_stops_the_running_prompt(server: LiveServer, http: Http):
    ws = server.connect_ws("i")
    pid = http.post("/prompt", json={"prompt": slow(100000), "client_id": "i"}
                    ).json()["prompt_id"]
    _wait_progress(ws, pid)
    assert http.post("/interrupt").json() == {"interrupted": True}
    events, _ = recv_until(ws, pid)
    assert events[-2]["type"] == "execution_interrupted"
    ws.close()


def test_history_paging_and_deletion(http: Http):
    http.post("/history", json={"clear": True})  # the module's server: other tests' entries
    ids = [http.post("/prompt", json={"prompt": chain(i)}).json()["prompt_id"]
           for i in range(5)]
    history = wait_history(http, ids)
    assert list(history) == ids  # oldest first
    assert list(http.get("/history", params={"max_items": 2}).json()) == ids[-2:]
    assert list(http.get("/history", params={"max_items": 2, "offset": 1}).json()) == ids[1:3]
    assert http.get("/history", params={"max_items": "x"}).status == 400
    assert http.get("/history/unknown").json() == {}
    http.post("/history", json={"delete": [ids[0]]})
    assert ids[0] not in http.get("/history").json()
    # a destructive flag is strictly boolean: "false" must not wipe the history
    for route, value in [("/history", "false"), ("/history", 1), ("/queue", "no")]:
        reply = http.post(route, json={"clear": value})
        assert reply.status == 400 and "true or false" in reply.json()["error"]["message"]
    assert list(http.get("/history").json()) == ids[1:]
    http.post("/history", json={"clear": True})
    assert http.get("/history").json() == {}


def test_a_ui_format_workflow_on_prompt_says_which_format_it_needs(http: Http):
    ui = {"nodes": [{"id": 1, "type": "TestSource", "inputs": [], "outputs": [],
                     "widgets_values": [1]}], "links": [], "version": 0.4}
    reply = http.post("/prompt", json={"prompt": ui})
    error = reply.json()["error"]
    assert reply.status == 400 and error["type"] == "invalid_prompt"
    assert "UI-format" in error["message"] and "/workflow/convert" in error["message"]
    assert "registry" not in error["message"]


def test_failed_node_is_recorded_with_its_error(server: LiveServer, http: Http):
    ws = server.connect_ws("f")
    prompt = {"1": {"class_type": "TestSource", "inputs": {}},
              "2": {"class_type": "TestFail", "inputs": {"x": ["1", 0]}},
              "3": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}}}
    pid = http.post("/prompt", json={"prompt": prompt, "client_id": "f"}).json()["prompt_id"]
    events, _ = recv_until(ws, pid)
    error = next(e for e in events if e["type"] == "execution_error")["data"]
    assert error["node_id"] == "2" and error["exception_message"] == "boom"
    entry = http.get(f"/history/{pid}").json()[pid]
    assert entry["status"]["status_str"] == "error"
    ws.close()


def test_info_routes_and_api_prefix(server: LiveServer, http: Http):
    info = http.get("/object_info").json()
    assert info["TestSource"]["input"]["required"]["value"][0] == "INT"
    assert http.get("/api/object_info/TestAdd").json()["TestAdd"]["output"] == ["INT"]
    nope = http.get("/object_info/Nope")  # as ComfyUI: an empty object
    assert nope.status == 200 and nope.json() == {}
    stats = http.get("/api/system_stats").json()
    assert stats["system"]["python_version"] and stats["devices"][0]["type"] == "cpu"
    # on the CPU, ComfyUI reports the RAM as the device's memory and no index
    cpu = stats["devices"][0]
    assert cpu["index"] is None and cpu["vram_total"] == stats["system"]["ram_total"] > 0
    assert 0 < cpu["vram_free"] <= cpu["vram_total"]
    (server.base_dir / "models" / "checkpoints").mkdir(parents=True)
    (server.base_dir / "models" / "checkpoints" / "a.safetensors").write_bytes(b"x")
    (server.base_dir / "models" / "embeddings").mkdir()
    (server.base_dir / "models" / "embeddings" / "e.pt").write_bytes(b"x")
    assert http.get("/models").json() == ["checkpoints", "embeddings"]
    assert http.get("/models/checkpoints").json() == ["a.safetensors"]
    assert http.get("/models/nope").status == 404
    assert http.get("/models/%2E%2E", raw=True).status == 404
    assert http.get("/embeddings").json() == ["e"]
    assert http.get("/api/prompt").json() == {"exec_info": {"queue_remaining": 0}}
    assert http.get("/api/queue").json() == {"queue_running": [], "queue_pending": []}


def test_workflows_listing_and_confinement(server: LiveServer, http: Http):
    folder = server.state.config.workflows_dir
    folder.mkdir()
    (folder / "txt2img.json").write_text(json.dumps({"1": {}}))
    (folder / "notes.txt").write_text("x")
    (server.base_dir / "secret.json").write_text("{}")
    (folder / "leak.json").symlink_to(server.base_dir / "secret.json")
    assert http.get("/workflows").json() == ["txt2img.json"]
    assert http.get("/workflows/txt2img.json").json() == {"1": {}}
    assert http.get("/workflows/leak.json").status == 403
    assert http.get("/workflows/..%2Fsecret.json", raw=True).status in (403, 404)
    assert http.get("/workflows/%2E%2E/secret.json", raw=True).status in (403, 404)
    assert http.get("/workflows/missing.json").status == 404


def test_canvas_page_when_not_built_and_when_built(server: LiveServer, http: Http):
    page = http.get("/")
    assert page.status == 200 and b"make run" in page.body
    dist = server.state.config.web_dir
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<html>canvas</html>")
    (dist / "assets" / "app.js").write_text("console.log(1)")
    assert http.get("/").body == b"<html>canvas</html>"
    js = http.get("/assets/app.js")
    assert js.status == 200 and js.headers["Content-Type"].startswith("text/javascript")
    assert http.get("/assets/../../secret", raw=True).status == 404
    assert http.get("/%2E%2E/%2E%2E/etc/passwd", raw=True).status == 404


def test_many_clients_many_prompts_nothing_lost(server: LiveServer):
    clients, per_client = 20, 10

    async def one_client(session: aiohttp.ClientSession, n: int) -> list[str]:
        cid = f"c{n}-{uuid.uuid4().hex[:6]}"
        async with session.ws_connect(f"{server.ws_url}?clientId={cid}") as ws:
            ids = []
            for i in range(per_client):
                async with session.post(f"{server.url}/prompt", json={
                        "prompt": chain(n, i), "client_id": cid}) as resp:
                    assert resp.status == 200
                    ids.append((await resp.json())["prompt_id"])
            done: set[str] = set()
            while done != set(ids):
                msg = await ws.receive(timeout=30)
                assert msg.type == aiohttp.WSMsgType.TEXT
                event = json.loads(msg.data)
                if event["type"] == "execution_success":
                    assert event["data"]["prompt_id"] in ids  # only our own events
                    done.add(event["data"]["prompt_id"])
            return ids

    async def main() -> list[str]:
        async with aiohttp.ClientSession() as session:
            batches = await asyncio.gather(*(one_client(session, n) for n in range(clients)))
            async with session.get(f"{server.url}/history") as resp:
                history = await resp.json()
        ids = [pid for batch in batches for pid in batch]
        assert len(set(ids)) == clients * per_client
        assert all(history[pid]["status"]["status_str"] == "success" for pid in ids)
        return ids

    asyncio.run(main())


def _wait_progress(ws, prompt_id: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        msg = json.loads(ws.recv())
        if msg["type"] == "progress" and msg["data"]["prompt_id"] == prompt_id:
            return
    raise TimeoutError("no progress")


def test_status_broadcast_and_reconnect_replays_the_running_node(server: LiveServer,
                                                                   http: Http):
    watcher = server.connect_ws("watcher")
    ws = server.connect_ws("runner")
    pid = http.post("/prompt", json={"prompt": slow(100000), "client_id": "runner"}
                    ).json()["prompt_id"]
    _wait_progress(ws, pid)
    ws.close()
    status = json.loads(watcher.recv())
    while status["type"] != "status":  # the runner left: its events now reach everyone
        status = json.loads(watcher.recv())
    assert status["data"]["status"]["exec_info"]["queue_remaining"] == 1
    again = websocket.create_connection(f"{server.ws_url}?clientId=runner", timeout=10)
    assert json.loads(again.recv())["type"] == "status"
    replay = json.loads(again.recv())
    assert replay == {"type": "executing", "data": {"node": "2", "display_node": "2",
                                                    "prompt_id": pid}}
    http.post("/interrupt")
    recv_until(again, pid)
    again.close()
    watcher.close()


def test_server_modules_do_not_import_torch():
    code = ("import sys, server.app, server.client, server.files, server.info; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'diffusers', 'transformers', 'nodes')); print(bad); "
            "sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_client_chosen_prompt_id_and_duplicates(server: LiveServer, http: Http):
    ws = server.connect_ws("d")
    first = http.post("/prompt", json={"prompt": slow(100000), "prompt_id": "mine-1",
                                       "client_id": "d"})
    assert first.json()["prompt_id"] == "mine-1"
    again = http.post("/prompt", json={"prompt": chain(), "prompt_id": "mine-1"})
    assert again.status == 400 and again.json()["error"]["type"] == "duplicate_prompt_id"
    _wait_progress(ws, "mine-1")
    http.post("/interrupt")
    recv_until(ws, "mine-1")
    ws.close()
    # ended, it is in the history: its id again would replace that entry (the earlier
    # run's record lost in silence), so it is refused until the entry is deleted
    wait_history(http, ["mine-1"])
    reused = http.post("/prompt", json={"prompt": chain(), "prompt_id": "mine-1"})
    assert reused.status == 400 and "already in the history" in reused.json()["error"]["message"]
    assert "mine-1" in http.get("/history/mine-1").json()
    http.post("/history", json={"delete": ["mine-1"]})
    assert http.post("/prompt", json={"prompt": chain(), "prompt_id": "mine-1"}).status == 200
    wait_history(http, ["mine-1"])


@pytest.mark.parametrize("node_id", ["3\nERROR server.runtime: FORGED", "a\x00b", "9" * 300])
def test_a_node_id_that_is_no_id_is_refused(http: Http, node_id: str):
    """Node ids go into the log and every event: a newline forged a log line."""
    prompt = chain()
    prompt[node_id] = prompt.pop("3")
    reply = http.post("/prompt", json={"prompt": prompt})
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_prompt" and "printable characters" in error["message"]
    assert "\n" not in error["message"] and len(error["message"]) < 600


def test_huge_names_in_a_prompt_are_not_echoed_whole(http: Http):
    """An unknown input name, class_type or linked id of megabytes came back whole in the
    reply (twice) and in the log."""
    prompt = chain()
    prompt["2"]["inputs"]["x" * 2_000_000] = 1
    prompt["4"] = {"class_type": "y" * 2_000_000, "inputs": {}}
    reply = http.post("/prompt", json={"prompt": prompt})
    assert reply.status == 400 and len(reply.body) < 50_000


@pytest.mark.parametrize("path", ["/extensions/steerflow/" + "a" * 300 + ".js",
                                  "/templates/" + "b" * 300 + ".json",
                                  "/view?filename=" + "c" * 300 + ".png"])
def test_a_file_name_past_the_file_systems_limit_is_a_client_error(http: Http, path: str):
    reply = http.get(path)
    assert 400 <= reply.status < 500 and reply.json()["error"]["type"]


def test_free_drops_the_workers_cache(server: LiveServer, http: Http):
    """ComfyUI's POST /free with ``free_memory``: the next run of the same prompt computes
    everything again; bad flags are a 400."""
    def cached_after_run() -> list[str]:
        pid = http.post("/prompt", json={"prompt": chain(value=5)}).json()["prompt_id"]
        entry = wait_history(http, [pid])[pid]
        return next(m[1]["nodes"] for m in entry["status"]["messages"]
                    if m[0] == "execution_cached")

    cached_after_run()
    assert "3" in cached_after_run()  # the result comes from the cache
    assert http.get("/system_stats").json()["system"]["worker"]["cache_entries"] > 0
    reply = http.post("/free", json={"unload_models": True, "free_memory": True})
    assert reply.status == 200
    # the idle worker freed at once: /system_stats says so before any other run
    stats = http.get("/system_stats").json()
    assert stats["system"]["worker"]["cache_entries"] == 0
    assert all(w["models"] == [] for w in stats.get("workers", []))
    assert cached_after_run() == []
    # "Unload Models" alone (the frontend's button) keeps the outputs cached, as in
    # ComfyUI: the models only leave the accelerator
    cached_after_run()
    assert http.post("/free", json={"unload_models": True}).status == 200
    assert "3" in cached_after_run()
    assert http.post("/free", json={"unload_models": "yes"}).status == 400
    assert http.post("/api/free", json={}).status == 200  # nothing asked: nothing done


def test_a_node_named_prompt_is_a_node_not_a_request_body(http: Http):
    """API prompts built by scripts name their nodes freely; one called "prompt" (a text
    encoder, say) once made /prompt take that node for a request body to unwrap."""
    prompt = {"prompt": {"class_type": "TestSource", "inputs": {"value": 4}},
              "out": {"class_type": "TestOut", "inputs": {"value": ["prompt", 0]}}}
    reply = http.post("/prompt", json={"prompt": prompt})
    assert reply.status == 200, reply.body
    pid = reply.json()["prompt_id"]
    entry = wait_history(http, [pid])[pid]
    assert entry["status"]["status_str"] == "success"
    assert entry["outputs"] == {"out": {"value": [4]}}
    assert entry["prompt"][2] == prompt
    # a prompt wrapped twice is not unwrapped either (ComfyUI refuses it too)
    twice = http.post("/prompt", json={"prompt": {"prompt": chain()}})
    assert twice.status == 400 and "node_errors" in twice.json()


def test_extra_data_is_checked_and_credentials_are_never_kept(http: Http):
    """As ComfyUI: comfy.org credentials that basic_api_example.py shows in extra_data are
    not stored nor shown (/queue, /history, /jobs show extra_data to everyone), and
    ``create_time`` is added; a client_id or extra_pnginfo that cannot work is a 400."""
    before = int(time.time() * 1000)
    reply = http.post("/prompt", json={"prompt": chain(), "extra_data": {
        "api_key_comfy_org": "comfyui-secret", "auth_token_comfy_org": "secret-too",
        "extra_pnginfo": {"workflow": {"id": "wf-1"}}, "mine": [1]}})
    assert reply.status == 200, reply.body
    pid = reply.json()["prompt_id"]
    entry = wait_history(http, [pid])[pid]
    extra = entry["prompt"][3]
    assert "secret" not in json.dumps(entry) and b"secret" not in http.get("/api/jobs").body
    assert set(extra) == {"extra_pnginfo", "mine", "create_time"}
    assert before <= extra["create_time"] <= int(time.time() * 1000)
    assert http.get(f"/api/jobs/{pid}").json()["create_time"] == extra["create_time"]
    for bad in ({"extra_pnginfo": 5}, {"extra_pnginfo": ["workflow"]}, {"client_id": 5},
                {"client_id": "a\x00b"}):
        reply = http.post("/prompt", json={"prompt": chain(), "extra_data": bad})
        assert reply.status == 400, bad
        assert reply.json()["node_errors"] == {}
    # extra_data's own client_id routes events as the body's does (ComfyUI reads both)
    ok = http.post("/prompt", json={"prompt": chain(), "extra_data": {"client_id": "x"}})
    assert ok.status == 200


def test_credentials_stored_by_older_versions_are_scrubbed_at_start(tmp_path):
    """Before extra_data was checked, comfy.org keys were stored and shown to everyone."""
    from server.storage import Storage

    storage = Storage(tmp_path / "db.sqlite")
    extra = {"client_id": "c", "api_key_comfy_org": "secret-1",
             "extra_pnginfo": {"workflow": {"nodes": []}}}
    storage.enqueue("q", 1.0, 1, {"prompt": {}, "extra_data": dict(extra)})
    storage.enqueue("h", 2.0, 2, {"prompt": {}})
    storage.finish("h", 2.0, {"prompt": [2, "h", {}, {**extra, "auth_token_comfy_org": "t"},
                                         []], "outputs": {}})
    (queued,) = storage.load_queue()
    assert queued.body["extra_data"] == {"client_id": "c",
                                         "extra_pnginfo": {"workflow": {"nodes": []}}}
    entry = storage.history_entry("h")
    assert "secret-1" not in entry and "auth_token" not in entry and '"client_id"' in entry
    assert storage.scrub_credentials() == 0  # nothing left to rewrite
    storage.close()


def test_a_post_route_read_with_get_is_405_not_a_missing_file(http: Http):
    for path in ("/interrupt", "/api/interrupt", "/free", "/upload/image"):
        reply = http.get(path)
        assert reply.status == 405, path
        assert reply.headers["Allow"] == "POST"
        assert reply.json()["error"]["type"] == "method_not_allowed"
    assert http.get("/no-such-route").status == 404
    assert http.get("/prompt").status == 200  # GET and POST both served


def test_hub_state_messages_are_built_once_per_interval_and_end_in_order():
    """A prompt's ``progress_state`` restates every node: built on each of 10,000 events
    it was quadratic. Only the latest goes out, built when sent, at most once per interval;
    the final one goes in order and forgets the prompt; no client, no build."""
    from server.ws import Hub

    hub = Hub()
    client = Recorder(features={})
    hub.clients["c"] = client  # type: ignore[assignment]
    builds: list[int] = []

    def build(n: int) -> Any:
        def make() -> str:
            builds.append(n)
            return json.dumps({"type": "progress_state", "data": {"n": n}})
        return make

    with attached_loop(hub) as loop:
        for n in range(1000):
            hub.post_state("c", "p", build(n), interval=0.05)
            if n % 100 == 0:
                loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(asyncio.sleep(0.2))
        assert builds[0] == 0 and builds[-1] == 999 and len(builds) <= 3, builds
        hub.post_state("c", "p", build(1000), interval=10)
        hub.post_state("c", "p", build(1001), interval=10, final=True)
        hub.post_event("c", "execution_success", {"prompt_id": "p"})
        hub.post_state("nobody", "q", build(-1), final=True)
        loop.run_until_complete(asyncio.sleep(0.01))
    kinds = client.messages()
    assert [k["data"].get("n") for k in kinds[-2:]] == [1001, None]
    assert kinds[-1]["type"] == "execution_success"
    assert -1 not in builds and 1000 not in builds
    assert not hub._states  # every prompt's state forgotten at its end
