"""What ComfyUI's frontend (1.27) needs that a walk through it found missing:
the upload button of Load Image, the server logs, model metadata, and per-node
progress and previews (``progress_state``, type 4 preview frames)."""

from __future__ import annotations

import json
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

import websocket

from engine import NodeRegistry
from tests.server.helpers import Http, LiveServer, image, recv_until
from tests.server.pack import make_registry


def registry_with_load_image() -> NodeRegistry:
    from nodes.image import LoadImage

    registry = make_registry()
    registry.register(LoadImage)
    return registry


def registry_with_a_failed_pack() -> NodeRegistry:
    from engine.registry import PackError

    registry = make_registry()
    registry.errors.append(PackError("custom_nodes/ComfyUI-Crystools",
                                     "ModuleNotFoundError: No module named 'deepdiff'"))
    registry.errors.append(PackError("custom_nodes/ComfyUI-KJNodes",
                                     "node 'ImageSharpenKJ' skipped: TypeError", whole=False))
    return registry


def test_system_stats_names_the_packs_that_failed_to_load(make_server: Callable[..., LiveServer],
                                                          loop: Any) -> None:
    """Their nodes are missing from the palette: the canvas says so on opening (the
    reason was only in the server's log)."""
    server = make_server(
        registry_factory="tests.server.test_comfy_frontend_compat:registry_with_a_failed_pack")
    http = Http(server.url, loop)
    try:
        packs = http.get("/system_stats").json()["packs"]
    finally:
        http.close()
    assert packs["loaded"] is True  # the list is final
    assert packs["errors"] == [
        {"pack": "custom_nodes/ComfyUI-Crystools",
         "message": "ModuleNotFoundError: No module named 'deepdiff'", "whole": True},
        {"pack": "custom_nodes/ComfyUI-KJNodes",
         "message": "node 'ImageSharpenKJ' skipped: TypeError", "whole": False}]


def test_a_failed_prompt_is_in_the_server_log_with_its_traceback(http: Http) -> None:
    """The front end's error report and Logs panel show the server's log: a prompt that
    failed in the worker left nothing there (ComfyUI prints the exception)."""
    from tests.server.helpers import wait_history

    prompt = {"1": {"class_type": "TestSource", "inputs": {"value": 1}},
              "2": {"class_type": "TestFail", "inputs": {"x": ["1", 0]}},
              "3": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}}}
    pid = http.post("/prompt", json={"prompt": prompt}).json()["prompt_id"]
    assert wait_history(http, [pid])[pid]["status"]["status_str"] == "error"
    deadline = time.monotonic() + 10
    while "boom" not in (text := http.get("/internal/logs").json()):
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.2)
    assert f"prompt {pid} failed at node 2 (TestFail): RuntimeError: boom" in text
    assert "Traceback" in text or "execute" in text


def test_what_a_node_prints_in_the_worker_is_in_the_logs_panel(http: Http,
                                                               server: LiveServer) -> None:
    """ComfyUI's Logs panel shows what a node prints (its one process's output); ours ran
    in the worker, whose output reached only the server's terminal."""
    from tests.server.helpers import wait_history

    ws = server.connect_ws("printer")
    try:
        assert http.request("PATCH", "/internal/logs/subscribe",
                            json={"clientId": "printer", "enabled": True}).status == 200
        prompt = {"1": {"class_type": "TestPrint", "inputs": {"text": "héllo ✓ from a node"}}}
        pid = http.post("/prompt", json={"prompt": prompt}).json()["prompt_id"]
        assert wait_history(http, [pid])[pid]["status"]["status_str"] == "success"
        deadline, seen = time.monotonic() + 10, ""
        while not ("stdout: héllo ✓" in seen and "stderr: héllo ✓" in seen):
            assert time.monotonic() < deadline, seen[-2000:]
            msg = json.loads(ws.recv())
            if msg["type"] == "logs":
                seen += "".join(e["m"] for e in msg["data"]["entries"])
    finally:
        ws.close()
    text = http.get("/internal/logs").json()
    assert "stdout: héllo ✓ from a node" in text and "stderr: héllo ✓ from a node" in text


BROKEN_PACKS = "STEERFLOW_TEST_BROKEN_PACKS"


def registry_with_a_broken_pack_folder() -> NodeRegistry:
    import os
    from pathlib import Path

    registry = make_registry()
    registry.load_directory(Path(os.environ[BROKEN_PACKS]))
    return registry


def test_a_pack_that_fails_to_import_is_in_the_logs_panel_once(
        make_server: Callable[..., LiveServer], loop: Any, monkeypatch: Any, tmp_path: Any
) -> None:
    """The server and its worker both import the packs; the worker's output now joins the
    server's log, so the worker does not log the failure the server logged already."""
    packs = tmp_path / "custom_nodes"
    packs.mkdir()
    (packs / "broken_pack.py").write_text("import a_module_nobody_installed_xyz\n")
    monkeypatch.setenv(BROKEN_PACKS, str(packs))
    server = make_server(registry_factory="tests.server.test_comfy_frontend_compat:"
                                          "registry_with_a_broken_pack_folder")
    http = Http(server.url, loop)
    try:
        pid = http.post("/prompt", json={"prompt": {
            "1": {"class_type": "TestSource", "inputs": {"value": 1}},
            "2": {"class_type": "TestOut", "inputs": {"value": ["1", 0]}}}}).json()["prompt_id"]
        from tests.server.helpers import wait_history

        wait_history(http, [pid])  # the worker has loaded its packs
        text = http.get("/internal/logs").json()
    finally:
        http.close()
    assert text.count("a_module_nobody_installed_xyz'") >= 1
    assert text.count("failed to load node pack") == 1, text[-3000:]


def test_load_image_announces_comfyui_image_upload(make_server: Callable[..., LiveServer],
                                                   loop: Any) -> None:
    # ComfyUI's frontend adds "choose file to upload" and the preview only for
    # ``image_upload: true`` (our schema says ``upload: "image"``).
    server = make_server(
        registry_factory="tests.server.test_comfy_frontend_compat:registry_with_load_image")
    http = Http(server.url, loop)
    try:
        one = http.get("/object_info/LoadImage").json()["LoadImage"]
        every = http.get("/api/object_info").json()["LoadImage"]
        for schema in (one, every):
            options = schema["input"]["required"]["image"][1]
            assert options["image_upload"] is True and options["upload"] == "image"
        assert "image_upload" not in json.dumps(http.get("/object_info/TestImage").json())
    finally:
        http.close()


def test_internal_logs_and_their_subscription(http: Http, server: LiveServer) -> None:
    # Without these the error dialog toasts "Failed to fetch server logs" on every
    # failed prompt, and the Logs panel says the backend is too old.
    logging.getLogger("steerflow.test").warning("a warning for the Logs panel")
    raw = http.get("/internal/logs/raw").json()
    assert raw["size"]["cols"] > 0
    entry = next(e for e in raw["entries"] if "a warning for the Logs panel" in e["m"])
    assert entry["m"].endswith("\n") and entry["t"][:4].isdigit()
    text = http.get("/internal/logs").json()
    assert isinstance(text, str) and "a warning for the Logs panel" in text

    ws = server.connect_ws("log-reader")
    try:
        reply = http.request("PATCH", "/internal/logs/subscribe",
                             json={"clientId": "log-reader", "enabled": True})
        assert reply.status == 200
        logging.getLogger("steerflow.test").error("live line")
        deadline = time.monotonic() + 10
        while True:
            msg = json.loads(ws.recv())
            if msg["type"] == "logs":
                break
            assert time.monotonic() < deadline
        assert any("live line" in e["m"] for e in msg["data"]["entries"])
        assert http.request("PATCH", "/internal/logs/subscribe",
                            json={"clientId": "log-reader", "enabled": False}).status == 200
        assert http.request("PATCH", "/internal/logs/subscribe",
                            json={"clientId": 3}).status == 400
    finally:
        ws.close()


def _safetensors(header: dict[str, Any]) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text


def test_view_metadata(http: Http, server: LiveServer) -> None:
    loras = server.base_dir / "models" / "loras"
    loras.mkdir(parents=True)
    (loras / "styled.safetensors").write_bytes(_safetensors(
        {"__metadata__": {"modelspec.title": "Styled"}}))
    (loras / "bare.safetensors").write_bytes(_safetensors({}))
    (loras / "broken.safetensors").write_bytes(b"\xff" * 16)
    for prefix in ("", "/api"):
        reply = http.get(prefix + "/view_metadata/loras?filename=styled.safetensors")
        assert reply.status == 200 and reply.json() == {"modelspec.title": "Styled"}
    # ComfyUI answers an empty 404 (its frontend parses any body as the metadata)
    for query in ("loras?filename=bare.safetensors", "loras?filename=broken.safetensors",
                  "loras?filename=missing.safetensors", "loras?filename=styled.ckpt",
                  "loras?filename=../../secret.safetensors", "loras"):
        reply = http.get("/view_metadata/" + query)
        assert reply.status == 404 and reply.body == b"", query


def _announce(ws: websocket.WebSocket, flags: dict[str, Any]) -> dict[str, Any]:
    ws.send(json.dumps({"type": "feature_flags", "data": flags}))
    while True:
        msg = json.loads(ws.recv())
        if msg["type"] == "feature_flags":
            return msg["data"]


def test_progress_state_and_previews_with_metadata(http: Http, server: LiveServer) -> None:
    # ComfyUI's frontend outlines the running node and draws its progress bar from
    # progress_state, and shows previews on the node from type 4 frames only.
    ws = server.connect_ws("modern")
    try:
        server_flags = _announce(ws, {"supports_preview_metadata": True})
        assert server_flags["supports_preview_metadata"] is True
        # the node stays running for many PROGRESS_INTERVALs: the coalesced state is
        # built when sent, so a node that ends at once may be seen only finished
        pid = http.post("/prompt", json={"prompt": image(value=5, preview=True, hold=1.0),
                                         "client_id": "modern"}).json()["prompt_id"]
        events, frames = recv_until(ws, pid)
    finally:
        ws.close()
    states = [e["data"]["nodes"] for e in events if e["type"] == "progress_state"]
    assert states and states[0]["1"]["state"] == "running"
    assert states[0]["1"]["prompt_id"] == pid and states[0]["1"]["display_node_id"] == "1"
    assert states[-1]["1"]["state"] == "finished"
    [frame] = frames
    kind, length = struct.unpack(">II", frame[:8])
    meta = json.loads(frame[8:8 + length])
    assert kind == 4 and meta["node_id"] == "1" and meta["prompt_id"] == pid
    assert meta["image_type"] in ("image/jpeg", "image/png")
    assert frame[8 + length:][:2] in (b"\xff\xd8", b"\x89P")


def test_plain_clients_keep_the_classic_protocol(http: Http, server: LiveServer) -> None:
    ws = server.connect_ws("plain")
    try:
        pid = http.post("/prompt", json={"prompt": image(value=6, preview=True),
                                         "client_id": "plain"}).json()["prompt_id"]
        events, frames = recv_until(ws, pid)
    finally:
        ws.close()
    assert "progress_state" not in [e["type"] for e in events]
    [frame] = frames
    assert struct.unpack(">I", frame[:4])[0] == 1


def test_node_progress_reads_as_comfyuis_registry() -> None:
    """A finished node reads value = max (ComfyUI's finish_progress), and a cached output
    node that shows its UI again (``executed`` without ``executing``) is finished."""
    from server.runtime import NodeProgress

    progress = NodeProgress("p")
    progress.update("executing", {"node": "3"})
    progress.update("progress", {"node": "3", "value": 4, "max": 20})
    progress.update("executing", {"node": "8"})
    progress.update("executed", {"node": "8"})
    progress.update("executed", {"node": "9"})
    progress.update("execution_success", {})
    nodes = json.loads(progress.message())["data"]["nodes"]
    assert {k: (v["state"], v["value"], v["max"]) for k, v in nodes.items()} == {
        "3": ("finished", 20, 20), "8": ("finished", 1, 1), "9": ("finished", 1, 1)}


def test_node_progress_is_cleared_by_an_interrupt() -> None:
    """After a cooperative interrupt no node reads running (ComfyUI's frontend would go
    on outlining it), as after a hard one."""
    from server.runtime import NodeProgress

    progress = NodeProgress("p")
    progress.update("executing", {"node": "3"})
    progress.update("progress", {"node": "3", "value": 4, "max": 20})
    assert progress.update("execution_interrupted", {"node_id": "3"})
    assert json.loads(progress.message())["data"]["nodes"] == {}
