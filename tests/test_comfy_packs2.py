"""ComfyUI compatibility II: a pack's ``from nodes import MAX_RESOLUTION`` and
``nodes.NODE_CLASS_MAPPINGS`` (ComfyUI's ``nodes`` module, through our package's lazy
``__getattr__``), and a pack's HTTP routes, answered in the worker
(tests/fixtures/comfy_packs2/route_pack.py)."""

from __future__ import annotations

import base64
import json
import queue
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine.registry import NodeRegistry
from tests.server.conftest import loop, make_server  # noqa: F401 (fixtures, server test)

PACKS = Path(__file__).parent / "fixtures" / "comfy_packs2"
REGISTRY = "tests.test_comfy_packs2:make_registry"


def make_registry() -> NodeRegistry:
    """The fixture pack alone (server and worker)."""
    from tests.engine_nodes import Out

    registry = NodeRegistry()
    registry.load_directory(PACKS)
    registry.register(Out)  # an output node: partial_execution_targets runs only those
    return registry


@pytest.fixture(scope="module")
def registry() -> NodeRegistry:
    from comfy_compat import ADAPTER

    ADAPTER.prepare()
    return make_registry()


def test_nodes_resolves_comfyui_public_names_lazily():
    code = ("import sys, nodes\n"
            "assert 'comfy_compat' not in sys.modules\n"  # nothing until asked
            "from nodes import MAX_RESOLUTION\n"
            "assert MAX_RESOLUTION == 16384 and nodes.MAX_RESOLUTION == 16384\n"
            "assert 'KSampler' in nodes.NODE_CLASS_MAPPINGS\n"
            "assert nodes.NODE_DISPLAY_NAME_MAPPINGS['HypernetworkLoader'] == "
            "'Load Hypernetwork'\n"
            "nodes.before_node_execution(); nodes.interrupt_processing()\n"
            "assert 'torch' not in sys.modules\n"
            "try:\n    nodes.no_such_name\nexcept AttributeError:\n    pass\n"
            "else:\n    raise SystemExit('no AttributeError')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr


def test_a_pack_bounds_its_input_with_max_resolution(registry: NodeRegistry):
    import nodes

    assert not registry.errors, registry.errors
    width = registry.schema()["SizedNumber"]["input"]["required"]["width"]
    assert width[1]["max"] == 16384 and width[1]["min"] == 16
    mapped = nodes.NODE_CLASS_MAPPINGS["SizedNumber"]  # the pack's own class
    assert mapped.__name__ == "SizedNumber" and mapped.FUNCTION == "run"
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["SizedNumber"] == "Sized Number"
    assert len(nodes.NODE_CLASS_MAPPINGS) == len(list(nodes.NODE_CLASS_MAPPINGS))


def test_the_bridge_calls_the_pack_handlers(registry: NodeRegistry):
    from comfy_compat.http_bridge import HttpBridge, registered_routes

    routes = registered_routes()
    assert ["GET", "/route_pack/hello"] in routes and ["POST", "/route_pack/echo/{kind}"] in routes
    assert not any(method == "PUT" for method, _ in routes)  # logged as not served
    replies: queue.Queue[dict[str, Any]] = queue.Queue()
    bridge = HttpBridge(replies.put, timeout=2.0)  # a loaded CI machine can take 0.5 s for a route

    def ask(method: str, path: str, body: bytes = b"", **extra: Any) -> tuple[int, Any, bytes]:
        bridge.submit({"id": "r", "method": method, "path": path,
                       "body": base64.b64encode(body).decode(), **extra})
        reply = replies.get(timeout=10)
        assert reply["op"] == "http_reply" and reply["id"] == "r"
        return reply["status"], reply["headers"], base64.b64decode(reply["body"])

    status, headers, body = ask("GET", "/route_pack/hello", query=[["name", "ada"]])
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["hello"] == "ada"
    status, _, body = ask("POST", "/route_pack/echo/k", b'{"a": [1, 2]}',
                          headers={"Content-Type": "application/json"})
    assert status == 200 and json.loads(body) == {"kind": "k", "data": {"a": [1, 2]}}
    assert ask("GET", "/route_pack/bytes")[2] == bytes(range(8))
    status, _, body = ask("GET", "/route_pack/boom")
    assert status == 502 and json.loads(body)["error"]["message"] == "RuntimeError: kaboom"
    assert ask("GET", "/route_pack/missing")[:3:2] == (404, b"no such thing")
    status, _, body = ask("GET", "/route_pack/slow", query=[["s", "5"]])
    assert status == 504 and json.loads(body)["error"]["type"] == "pack_route_timeout"
    assert ask("GET", "/route_pack/nowhere")[0] == 404
    assert ask("POST", "/route_pack/hello")[0] == 405
    assert ask("DELETE", "/route_pack/hello")[0] == 400


@pytest.mark.slow
def test_pack_routes_through_the_server_and_worker(make_server, loop):  # noqa: F811
    from tests.server.helpers import Http, wait_history

    srv = make_server(registry_factory=REGISTRY, token="t0ken")
    http = Http(srv.url, loop, headers={"Authorization": "Bearer t0ken"})
    anonymous = Http(srv.url, loop)
    try:
        deadline = time.monotonic() + 120
        while (reply := http.get("/route_pack/hello")).status != 200:  # the worker starts
            assert time.monotonic() < deadline, reply.body
            time.sleep(0.2)
        assert reply.json()["max"] == 16384 and reply.json()["calls"] == 0
        assert anonymous.get("/route_pack/hello").status == 401  # never public
        assert anonymous.get("/api/route_pack/hello", params={"token": "t0ken"}).status == 200

        reply = http.post("/api/route_pack/echo/json", json={"x": 1})
        assert reply.status == 200 and reply.json() == {"kind": "json", "data": {"x": 1}}
        reply = http.get("/route_pack/text")
        assert reply.body == b"plain words" and reply.headers["Content-Type"].startswith(
            "text/plain")
        assert http.get("/api/route_pack/bytes").body == bytes(range(8))
        reply = http.get("/route_pack/boom")
        assert reply.status == 502 and reply.json()["error"]["type"] == "pack_route_error"
        assert http.get("/route_pack/missing").status == 404
        assert http.get("/route_pack/nowhere").status == 404  # not a pack route: ours
        big = http.post("/route_pack/echo/big", data=b"x" * (9 * 1024 * 1024))
        assert big.status == 413
        assert http.get("/queue").status == 200  # our routes are untouched

        # the handler runs where the nodes run: it sees the worker's state
        done = http.post("/prompt", json={"prompt": {"1": {"class_type": "SizedNumber",
                                                           "inputs": {"width": 64}},
                                                     "2": {"class_type": "TestOut",
                                                           "inputs": {"value": ["1", 0]}}},
                                          "partial_execution_targets": ["2"]})
        assert done.status == 200, done.body
        wait_history(http, [done.json()["prompt_id"]])
        assert http.get("/route_pack/hello").json()["calls"] == 1
        # while a prompt runs, the dispatcher reads the channel and hands the reply over
        sleepy = http.post("/prompt", json={"prompt": {"1": {"class_type": "SleepyNumber",
                                                             "inputs": {"seconds": 3.0}},
                                                       "2": {"class_type": "TestOut",
                                                             "inputs": {"value": ["1", 0]}}},
                                            "partial_execution_targets": ["2"]})
        while not http.get("/queue").json()["queue_running"]:
            time.sleep(0.05)
        started = time.monotonic()
        assert http.get("/route_pack/hello").status == 200
        assert time.monotonic() - started < 2.5  # not after the 3 s prompt
        assert http.get("/queue").json()["queue_running"]  # answered mid-prompt
        wait_history(http, [sleepy.json()["prompt_id"]])
        too_wide = http.post("/prompt", json={"prompt": {"1": {
            "class_type": "SizedNumber", "inputs": {"width": 16392}}}})
        assert too_wide.status == 400
    finally:
        http.close()
        anonymous.close()
