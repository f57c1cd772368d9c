"""Live servers for the tests (in-process or subprocess) and small sync clients."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import websocket
import yarl
from aiohttp import web

from server.app import create_app
from server.config import ServerConfig
from server.state import STATE, ServerState

REPO = Path(__file__).resolve().parents[2]


# The test node pack, for the server's validation and its worker process alike.
TEST_REGISTRY = "tests.server.pack:make_registry"


class Loop:
    """An event loop in a thread, for sync tests driving async code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


#: seconds one request may take
REQUEST_TIMEOUT = 180


class Http:
    """A synchronous face on one aiohttp ClientSession."""

    def __init__(self, base: str, loop: Loop, headers: dict[str, str] | None = None):
        self.base = base
        self.loop = loop
        self.session: aiohttp.ClientSession = loop.run(self._open(headers or {}))

    @staticmethod
    async def _open(headers: dict[str, str]) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(headers=headers)

    def request(self, method: str, path: str, *, raw: bool = False, **kwargs: Any) -> Reply:
        """``raw``: send the path exactly as given (no client-side ``..`` folding)."""
        url = yarl.URL(self.base + path, encoded=True) if raw else self.base + path

        async def go() -> Reply:
            async with self.session.request(method, url, **kwargs) as resp:
                return Reply(resp.status, resp.headers, await resp.read())

        # A first request may wait for a worker still starting: on a loaded CI machine
        # that passed 60 s once (tests/server/test_blocked.py's POST /prompt)
        return self.loop.run(go(), timeout=REQUEST_TIMEOUT)

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Reply:
        return self.request("POST", path, **kwargs)

    def close(self) -> None:
        self.loop.run(self.session.close())


@dataclass
class LiveServer:
    url: str
    port: int
    base_dir: Path
    token: str | None = None
    app: web.Application | None = None
    stop: Callable[[], None] = lambda: None

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[4:] + "/ws"

    @property
    def state(self) -> ServerState:
        assert self.app is not None
        return self.app[STATE]

    def connect_ws(self, client_id: str, **kwargs: Any) -> websocket.WebSocket:
        ws = websocket.create_connection(f"{self.ws_url}?clientId={client_id}", timeout=20,
                                         **kwargs)
        first = json.loads(ws.recv())
        assert first["type"] == "status" and first["data"]["sid"] == client_id
        return ws


class InProcessServer:
    """create_app on a free loopback port, served by a background event loop."""

    def __init__(self, config: ServerConfig,
                 setup_app: Callable[[web.Application], None] | None = None):
        self.loop = Loop()
        self.app = create_app(config)
        if setup_app:
            setup_app(self.app)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.port = self.loop.run(self._start(config.host))
        self.live = LiveServer(f"http://{config.host}:{self.port}", self.port, config.base_dir,
                               config.token, self.app, self.stop)
        self.stopped = False

    async def _start(self, host: str) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, 0)
        await site.start()
        return self.runner.addresses[0][1]

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.loop.run(self.runner.cleanup(), timeout=30)
            self.loop.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SubprocessServer:
    """``python -m steerflow.cli serve`` with the test registry, for crash tests."""

    def __init__(self, base_dir: Path, port: int | None = None, *extra: str):
        self.base_dir = base_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "steerflow.cli", "serve", "--port", str(self.port),
               "--base-dir", str(base_dir), "--device", "cpu",
               "--registry", "tests.server.pack:make_registry", *extra]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("STEERFLOW_TOKEN", None)
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: "
                                   f"{self.proc.stdout.read() if self.proc.stdout else ''}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("server did not start")

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no cleanup at all
        self.proc.wait(10)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.stdout.read() if self.proc.stdout else ""


def chain(value: int = 1, b: int = 2) -> dict[str, Any]:
    """Source → Add → Out: three fast nodes."""
    return {
        "1": {"class_type": "TestSource", "inputs": {"value": value}},
        "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": b}},
        "3": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}},
    }


def slow(steps: int, value: int = 1) -> dict[str, Any]:
    return {
        "1": {"class_type": "TestSource", "inputs": {"value": value}},
        "2": {"class_type": "TestSlow", "inputs": {"x": ["1", 0], "steps": steps}},
        "3": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}},
    }


def image(value: int = 7, preview: bool = False, hold: float = 0.0) -> dict[str, Any]:
    return {"1": {"class_type": "TestImage",
                  "inputs": {"value": value, "preview": preview, "hold": hold}}}


def recv_until(ws: websocket.WebSocket, prompt_id: str, *, timeout: float = 20
               ) -> tuple[list[dict[str, Any]], list[bytes]]:
    """JSON events of ``prompt_id`` (and binary frames) up to its final executing/None."""
    events: list[dict[str, Any]] = []
    frames: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        opcode, data = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_BINARY:
            frames.append(data)
            continue
        msg = json.loads(data)
        if msg["data"].get("prompt_id") != prompt_id:
            continue
        events.append(msg)
        if msg["type"] == "executing" and msg["data"]["node"] is None:
            return events, frames
    raise TimeoutError(f"no end of prompt {prompt_id}; got {[e['type'] for e in events]}")


def wait_history(http: Http, prompt_ids: list[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        history = http.get("/history").json()
        if all(p in history for p in prompt_ids) or time.monotonic() > deadline:
            return history
        time.sleep(0.1)


def start_server(base: Path, setup_app: Callable[[web.Application], None] | None = None,
                 **overrides: Any) -> InProcessServer:
    """An in-process server on ``base`` with the test pack and ``ServerConfig`` overrides."""
    overrides.setdefault("workflows_dir", base / "workflows")
    overrides.setdefault("web_dir", base / "web-dist")
    overrides.setdefault("registry_factory", TEST_REGISTRY)  # None: the real packs
    config = ServerConfig(host="127.0.0.1", port=0, base_dir=base, device="cpu", **overrides)
    return InProcessServer(config, setup_app)


def wait_quiet(server: LiveServer, timeout: float = 60) -> None:
    """Until nothing is queued or running and every worker is up and idle: a test on a
    shared server starts as on a fresh one."""
    deadline = time.monotonic() + timeout
    runtime = server.state.runtime
    while server.state.queue.remaining() or any(
            w["state"] != "idle" for w in runtime.workers()):
        assert time.monotonic() < deadline, (server.state.queue.snapshot(),
                                             runtime.workers())
        time.sleep(0.02)
