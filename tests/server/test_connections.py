"""Connection limits (faults drill §1): half-sent request heads and stalled bodies are cut
(server/connections.py), a declared body over the limit is 413 before it is read, and a
flood of header-less connections cannot starve established clients. Also §2 (/view never
serves an atomic write's temp file) and §3 (/internal/files on a folder that is a file).

The guarded servers here run with 1 s timeouts, so each test takes a few seconds."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from server import connections
from server.app import connection_limits, create_app
from server.config import ServerConfig
from server.connections import ConnectionLimits
from steerflow.cli import main
from tests.server.helpers import TEST_REGISTRY, Http, LiveServer, Loop

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


class Guarded:
    """create_app served as ``steerflow serve`` serves it: through connections.listen."""

    def __init__(self, base: Any, **overrides: Any):
        self.loop = Loop()
        config = ServerConfig(host="127.0.0.1", port=0, base_dir=base, device="cpu",
                              workflows_dir=base / "workflows", web_dir=base / "web-dist",
                              registry_factory=TEST_REGISTRY, **overrides)
        self.app = create_app(config)
        self.runner = web.AppRunner(self.app, access_log=None,
                                    keepalive_timeout=connections.KEEPALIVE_TIMEOUT)
        self.loop.run(self.runner.setup())
        self.server, self.guard = self.loop.run(connections.listen(
            self.runner, "127.0.0.1", 0, connection_limits(config)))
        self.port = self.server.sockets[0].getsockname()[1]
        self.live = LiveServer(f"http://127.0.0.1:{self.port}", self.port, config.base_dir,
                               None, self.app)

    def stop(self) -> None:
        async def stop() -> None:
            await self.guard.stop()
            self.server.close()
            await self.runner.cleanup()
        self.loop.run(stop(), timeout=30)
        self.loop.close()


@pytest.fixture
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Guarded]]:
    started: list[Guarded] = []

    def make(**overrides: Any) -> Guarded:
        overrides = {"header_timeout": 1.0, "body_timeout": 1.0, **overrides}
        srv = Guarded(tmp_path_factory.mktemp("guarded"), **overrides)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


def raw(port: int, data: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if data:
        s.sendall(data)
    return s


def until_closed(s: socket.socket, limit: float = 5.0) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and how long that took."""
    start, got = time.monotonic(), b""
    s.settimeout(limit)
    try:
        while chunk := s.recv(65536):
            got += chunk
    except TimeoutError:
        pytest.fail(f"still open after {limit} s; got {got[:200]!r}")
    except ConnectionResetError:
        pass
    return got, time.monotonic() - start


def head(port: int, line: str, extra: str = "") -> bytes:
    return f"{line}\r\nHost: 127.0.0.1:{port}\r\n{extra}".encode()


def is_open(s: socket.socket) -> bool:
    """Open and silent: nothing (no reply, no close) from the server yet."""
    s.settimeout(0.05)
    try:
        s.recv(1)
        return False
    except TimeoutError:
        return True
    except OSError:
        return False


# --- request heads ------------------------------------------------------------------
def test_a_half_sent_head_is_answered_408_and_closed(guarded):
    srv = guarded()
    half = raw(srv.port, head(srv.port, "GET /system_stats HTTP/1.1"))
    silent = raw(srv.port)
    reply, took = until_closed(half)
    assert reply.startswith(b"HTTP/1.1 408 ") and took < 3
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "request_timeout"
    assert until_closed(silent)[0] == b""  # sent nothing: closed without a word


def test_a_trickling_head_is_cut_at_the_header_timeout(guarded):
    srv = guarded()
    s = raw(srv.port, head(srv.port, "GET /system_stats HTTP/1.1"))
    start = time.monotonic()
    while time.monotonic() - start < 5 and is_open(s):  # a header line every 0.2 s
        try:
            s.sendall(b"X-A: b\r\n")
        except OSError:
            break
        time.sleep(0.2)
    assert 0.9 < time.monotonic() - start < 3


def test_keep_alive_and_websockets_outlive_the_timers(guarded):
    srv = guarded()
    s = raw(srv.port, head(srv.port, "GET /system_stats HTTP/1.1", "\r\n"))
    s.settimeout(5)
    assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
    ws = srv.live.connect_ws("idle-client")
    time.sleep(2.5)  # past both timeouts, idle
    s.sendall(head(srv.port, "GET /system_stats HTTP/1.1", "\r\n"))
    assert s.recv(65536).startswith(b"HTTP/1.1 200 ")  # the same connection, reused
    ws.ping(b"still there?")
    frame = ws.recv_data_frame(control_frame=True)[1]
    assert frame.data == b"still there?"  # the pong: the websocket was never cut
    ws.close()
    s.close()


def test_a_flood_of_waiting_connections_drops_the_oldest(guarded):
    srv = guarded(header_timeout=10.0, max_pending_connections=4)
    ws = srv.live.connect_ws("established")
    flood = [raw(srv.port, head(srv.port, "GET / HTTP/1.1")) for _ in range(10)]
    time.sleep(0.3)
    assert [is_open(s) for s in flood] == [False] * 6 + [True] * 4
    loop = Loop()
    try:  # a normal client still gets in, and the established websocket stays
        assert Http(srv.live.url, loop).get("/system_stats").status == 200
    finally:
        loop.close()
    ws.ping(b"x")
    assert ws.recv_data_frame(control_frame=True)[1].data == b"x"
    ws.close()
    for s in flood:
        s.close()


def test_the_cap_follows_the_fd_limit(monkeypatch):
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _kind: (1024, 4096))
    assert ConnectionLimits(max_pending=1000).bounded_by_fd_limit().max_pending == 256
    assert ConnectionLimits(max_pending=100).bounded_by_fd_limit().max_pending == 100


@pytest.mark.parametrize("value", ["0", "0.5", "301", "nan", "inf"])
def test_serve_refuses_a_header_timeout_out_of_range(tmp_path, capsys, value):
    capsys.readouterr()
    assert main(["serve", "--header-timeout", value, "--base-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --header-timeout must be 1..300 seconds"), err


def test_an_unparsable_request_gets_the_structured_json_400(guarded):
    """Security drill §9: aiohttp's own parse errors, before any middleware, are JSON."""
    srv = guarded()
    for data in (head(srv.port, "GET /history/" + "a" * 9000 + " HTTP/1.1", "\r\n"),
                 head(srv.port, "GET /queue HTTP/1.1", f"X-Big: {'b' * 9000}\r\n\r\n"),
                 head(srv.port, "GET /queue HTTP/1.1", "Bad Header\r\n\r\n")):
        got, _ = until_closed(raw(srv.port, data))
        status, _, body = got.partition(b"\r\n\r\n")
        assert status.split(b"\r\n")[0].split()[1] == b"400", got[:200]
        assert b"Content-Type: application/json" in status
        error = json.loads(body)["error"]
        assert error["type"] in ("request_too_long", "bad_request"), error
        assert "aaaa" not in error["message"] and "bbbb" not in error["message"]
    client = Http(srv.live.url, srv.loop)
    assert client.get("/queue").status == 200  # still serving
    client.close()


# --- request bodies -----------------------------------------------------------------
def test_a_declared_body_over_the_limit_is_413_before_it_is_read(guarded):
    srv = guarded(max_prompt_bytes=1000)
    s = raw(srv.port, head(srv.port, "POST /prompt HTTP/1.1",
                           "Content-Type: application/json\r\n"
                           "Content-Length: 10000000000\r\n\r\n{"))
    s.settimeout(2)
    reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413 ")
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["type"] == "request_entity_too_large"
    assert body["error"]["extra_info"]["limit_bytes"] == 1000
    assert body["node_errors"] == {}  # /prompt's clients read it from every refusal
    s.close()


def test_a_stalled_body_is_408_and_a_slow_one_is_read(guarded):
    srv = guarded()
    body = json.dumps({"prompt": {}}).encode()
    stalled = raw(srv.port, head(srv.port, "POST /prompt HTTP/1.1",
                                 f"Content-Length: {len(body)}\r\n\r\n") + body[:3])
    reply, took = until_closed(stalled)
    assert reply.startswith(b"HTTP/1.1 408 ") and took < 3
    error = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["type"] == "request_timeout" and "stopped arriving" in error["message"]

    slow = raw(srv.port, head(srv.port, "POST /prompt HTTP/1.1",
                              f"Content-Length: {len(body)}\r\n\r\n"))
    for i in range(0, len(body), 3):  # 2.5 s in all, never 1 s without a byte
        time.sleep(0.4)
        slow.sendall(body[i:i + 3])
    slow.settimeout(5)
    assert slow.recv(65536).startswith(b"HTTP/1.1 400 ")  # read whole: an empty prompt


def test_a_slow_upload_that_keeps_sending_succeeds(guarded):
    import io

    from PIL import Image

    srv = guarded()
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    form = (b"--BB\r\nContent-Disposition: form-data; name=\"image\"; filename=\"slow.png\""
            b"\r\nContent-Type: image/png\r\n\r\n" + buf.getvalue() + b"\r\n--BB--\r\n")
    s = raw(srv.port, head(srv.port, "POST /upload/image HTTP/1.1",
                           "Content-Type: multipart/form-data; boundary=BB\r\n"
                           f"Content-Length: {len(form)}\r\n\r\n"))
    step = len(form) // 6 + 1
    for i in range(0, len(form), step):
        time.sleep(0.45)
        s.sendall(form[i:i + step])
    s.settimeout(5)
    reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:300]
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["name"] == "slow.png"


# --- /view and /internal/files ------------------------------------------------------
def test_view_never_serves_an_atomic_writes_temp_file(server: LiveServer, http: Http):
    out = server.base_dir / "output"
    out.mkdir(exist_ok=True)
    (out / ".bigsave.71b7c02e.tmp").write_bytes(PNG)
    (out / ".bigsave_00001_.png.4242.tmp").write_bytes(PNG)
    (server.base_dir / "input").mkdir(exist_ok=True)
    (server.base_dir / "input" / ".upload-x1y2.part").write_bytes(PNG)
    (out / "bigsave_00001_.png").write_bytes(PNG)
    for name, role in [(".bigsave.71b7c02e.tmp", "output"),
                       (".bigsave_00001_.png.4242.tmp", "output"),
                       (".upload-x1y2.part", "input")]:
        reply = http.get(f"/view?filename={name}&type={role}")
        assert reply.status == 404 and reply.json()["error"]["type"] == "not_found", name
    assert http.get("/view?filename=bigsave_00001_.png&type=output").status == 200
    assert http.get("/internal/files/output").json() == ["bigsave_00001_.png"]


def test_internal_files_on_a_folder_that_is_a_file(server: LiveServer, http: Http):
    (server.base_dir / "output").write_text("I am a file")
    reply = http.get("/internal/files/output")
    assert reply.status == 500
    error = reply.json()["error"]
    assert error["type"] == "folder_unavailable"
    assert error["message"] == "the output folder is not a directory (a file is in its place)"


def test_internal_files_on_an_unreadable_folder(server: LiveServer, http: Http, monkeypatch):
    folder = server.state.env.folder("input")
    scandir = os.scandir

    def refuse(path: Any) -> Any:  # root reads any folder: chmod cannot show this
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied")
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    reply = http.get("/internal/files/input")
    assert reply.status == 403
    assert reply.json()["error"] == {
        "type": "folder_unavailable", "message": "cannot list the input folder: Permission "
        "denied", "details": "", "extra_info": {}}
