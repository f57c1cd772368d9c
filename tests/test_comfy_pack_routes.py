"""Node packs' HTTP routes as ComfyUI serves them (tests/fixtures/comfy_pack_routes):
answers that are files or streams (rgthree's /rgthree/common/*.js, pysssss' previews),
an encoded slash in a path parameter (matched still encoded, as aiohttp does), and the
start-up window before the worker reports its routes (held, then 503 + Retry-After)."""

from __future__ import annotations

import base64
import json
import os
import queue
import time
from pathlib import Path
from typing import Any

import pytest

from engine.registry import NodeRegistry
from tests.server.conftest import loop, make_server  # noqa: F401 (fixtures, server test)

PACKS = Path(__file__).parent / "fixtures" / "comfy_pack_routes"
WEB = PACKS / "files_pack" / "web"
REGISTRY = "tests.test_comfy_pack_routes:make_registry"


def make_registry() -> NodeRegistry:
    """The fixture pack alone (server and worker)."""
    registry = NodeRegistry()
    registry.load_directory(PACKS)
    return registry


@pytest.fixture(scope="module")
def bridge() -> Any:
    from comfy_compat import ADAPTER
    from comfy_compat.http_bridge import HttpBridge

    ADAPTER.prepare()
    registry = make_registry()
    assert not registry.errors, registry.errors
    replies: queue.Queue[dict[str, Any]] = queue.Queue()
    b = HttpBridge(replies.put, timeout=5)
    b.replies = replies
    return b


def ask(bridge: Any, path: str, **extra: Any) -> tuple[int, dict[str, str], bytes]:
    bridge.submit({"id": "r", "method": "GET", "path": path, "body": "", **extra})
    reply = bridge.replies.get(timeout=10)
    assert reply["op"] == "http_reply" and reply["id"] == "r"
    return reply["status"], reply["headers"], base64.b64decode(reply["body"])


def test_file_answers_are_forwarded(bridge: Any, monkeypatch: pytest.MonkeyPatch):
    from comfy_compat import http_bridge

    js = (WEB / "common" / "util.js").read_bytes()
    status, headers, body = ask(bridge, "/files_pack/common/util.js")
    assert status == 200 and body == js
    assert "javascript" in headers["Content-Type"]  # aiohttp's type for the suffix
    assert headers["ETag"] and headers["Last-Modified"]
    status, _, body = ask(bridge, "/files_pack/common/util.js",
                          headers={"If-None-Match": headers["ETag"]})
    assert (status, body) == (304, b"")
    status, headers, body = ask(bridge, "/files_pack/common/util.js",
                                headers={"Range": "bytes=0-5"})
    assert (status, body) == (206, js[:6]) and headers["Content-Range"] == f"bytes 0-5/{len(js)}"
    assert ask(bridge, "/files_pack/common/missing.js")[0] == 404  # as aiohttp answers
    status, headers, body = ask(bridge, "/files_pack/stream")
    assert (status, body) == (200, b"one two three") and headers["Content-Type"] == "text/plain"
    monkeypatch.setattr(http_bridge, "MAX_BODY", 8)  # bounded like any other answer
    status, _, body = ask(bridge, "/files_pack/common/util.js")
    assert status == 502 and "over 8 bytes" in json.loads(body)["error"]["message"]


def test_an_encoded_slash_stays_in_the_parameter(bridge: Any):
    status, _, body = ask(bridge, "/files_pack/name/loras%2Fx%20y.safetensors")
    assert status == 200 and json.loads(body) == {"name": "loras/x y.safetensors"}
    status, headers, body = ask(bridge, "/files_pack/view/loras%2Fshape.png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert body == (WEB / "loras" / "shape.png").read_bytes()
    assert headers["Cache-Control"] == "max-age=60"
    assert ask(bridge, "/files_pack/name/loras/x")[0] == 404  # a real slash: no match
    assert ask(bridge, "/files_pack/view/..%2F..%2F__init__.py")[0] == 403  # the pack's check


@pytest.mark.slow
def test_pack_files_through_the_server_and_the_start_up_window(
        make_server, loop, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    from server import pack_routes
    from tests.server.helpers import Http

    monkeypatch.setenv("FILES_PACK_DELAY", "6")  # the worker reports its routes late
    monkeypatch.setenv("FILES_PACK_HEAD_PID", str(os.getpid()))
    monkeypatch.setattr(pack_routes, "HOLD", 0.5)
    srv = make_server(registry_factory=REGISTRY, token="t0ken")
    http = Http(srv.url, loop, headers={"Authorization": "Bearer t0ken"})
    anonymous = Http(srv.url, loop)
    runtime = srv.state.runtime
    js = (WEB / "common" / "util.js").read_bytes()
    try:
        deadline = time.monotonic() + 60
        while runtime.registry is None:  # the server's own packs, not the worker's
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "pack_routes" not in runtime.worker_info
        # not reported after the hold: 503 starting, Retry-After (not a 404)
        reply = http.get("/files_pack/common/util.js")
        assert reply.status == 503, reply.body
        assert reply.json()["error"]["type"] == "starting"
        assert reply.headers["Retry-After"] == pack_routes.RETRY_AFTER
        assert anonymous.get("/files_pack/common/util.js").status == 401  # never public
        started = time.monotonic()  # a path no pack registered is not held
        assert http.get("/no_pack/here").status == 404
        assert time.monotonic() - started < pack_routes.HOLD / 4  # not held
        assert "pack_routes" not in runtime.worker_info  # still in the window
        monkeypatch.setattr(pack_routes, "HOLD", 60.0)
        reply = http.get("/files_pack/common/util.js")  # held until the worker reports
        assert reply.status == 200, reply.body
        assert reply.body == js and "javascript" in reply.headers["Content-Type"]
        assert reply.headers["X-Content-Type-Options"] == "nosniff"

        # D5/D6 through the server: encoded slash, file type, caching headers
        reply = http.get("/api/files_pack/view/loras%2Fshape.png", raw=True)
        assert reply.status == 200 and reply.headers["Content-Type"] == "image/png"
        assert reply.body == (WEB / "loras" / "shape.png").read_bytes()
        reply = http.get("/files_pack/name/loras%2Fx.safetensors", raw=True)
        assert reply.json() == {"name": "loras/x.safetensors"}
        etag = http.get("/files_pack/common/util.js").headers["ETag"]
        reply = http.get("/files_pack/common/util.js", headers={"If-None-Match": etag})
        assert reply.status == 304 and reply.body == b""
        assert http.get("/files_pack/stream").body == b"one two three"
        assert http.get("/files_pack/common/missing.js").status == 404
    finally:
        http.close()
        anonymous.close()


def test_routes_added_on_the_app_at_import_are_answered(bridge: Any):
    """``PromptServer.instance.app.add_routes`` (KJNodes) joins the pack routes; a static
    folder is not served (a pack's files are its WEB_DIRECTORY)."""
    status, _headers, body = ask(bridge, "/files_pack/added")
    assert status == 200 and json.loads(body) == {"added": True}
    status, _headers, _body = ask(bridge, "/files_pack_static/common/util.js")
    assert status == 404


def test_a_pack_imported_again_answers_with_its_latest_routes(bridge: Any):
    """A second registry in the same process imports a pack again, registering its routes
    again: the bridge answers with the latest handler, never fails on the duplicate."""
    from aiohttp import web

    from comfy_compat.http_bridge import HttpBridge
    from server import PromptServer

    async def first(_request: Any) -> Any:
        return web.json_response({"which": 1})

    async def second(_request: Any) -> Any:
        return web.json_response({"which": 2})

    PromptServer.instance.routes.get("/files_pack/twice")(first)
    PromptServer.instance.routes.get("/files_pack/twice")(second)
    replies: queue.Queue[dict[str, Any]] = queue.Queue()
    fresh = HttpBridge(replies.put, timeout=5)
    fresh.replies = replies
    status, _headers, body = ask(fresh, "/files_pack/twice")
    assert status == 200 and json.loads(body) == {"which": 2}
