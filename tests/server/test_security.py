"""Origin/Host checks, token auth, and errors that never leak a traceback."""

from __future__ import annotations

import argparse
import json

import pytest
import websocket
from aiohttp import web

from server.app import serve
from server.config import ConfigError, ServerConfig
from tests.server.helpers import Http, LiveServer, chain


def test_cross_origin_post_refused_same_origin_accepted(server: LiveServer, http: Http):
    body = json.dumps({"prompt": chain()})
    for origin in ("http://evil.example", "null", f"http://localhost:{server.port}",
                   "http://127.0.0.1:1", "http://127.0.0.1", "file://", "garbage"):
        reply = http.post("/prompt", data=body, headers={"Origin": origin})
        assert reply.status == 403, origin
        assert reply.json()["error"]["type"] == "cross_origin"
    reply = http.post("/prompt", data=body, headers={"Sec-Fetch-Site": "cross-site"})
    assert reply.status == 403
    reply = http.post("/prompt", data=body, headers={"Origin": server.url,
                                                     "Sec-Fetch-Site": "same-origin"})
    assert reply.status == 200
    assert http.post("/prompt", data=body).status == 200  # non-browser clients: no Origin
    assert http.get("/queue", headers={"Origin": "http://evil.example"}).status == 403
    assert http.get("/queue").headers.get("Access-Control-Allow-Origin") is None


def test_allow_listed_origin(make_server, loop):
    server = make_server(allow_origins=frozenset({"http://localhost:5173/"}))
    http = Http(server.url, loop)
    reply = http.post("/prompt", json={"prompt": chain()},
                      headers={"Origin": "http://localhost:5173"})
    assert reply.status == 200
    http.close()


def test_cross_origin_websocket_refused(server: LiveServer):
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        websocket.create_connection(server.ws_url, origin="http://evil.example", timeout=5)
    assert err.value.status_code == 403
    ws = websocket.create_connection(server.ws_url, origin=server.url, timeout=5)
    assert json.loads(ws.recv())["type"] == "status"
    ws.close()


def test_dns_rebinding_host_refused(server: LiveServer, http: Http):
    # a Host read as a URL names the loopback host through a user part or a fragment
    for host in (f"evil.example:{server.port}", "evil.example", f"127.0.0.1.evil:{server.port}",
                 "[::2]:1", "evil@127.0.0.1", "127.0.0.1#.evil", "127.0.0.1/x"):
        reply = http.get("/history", headers={"Host": host})
        assert reply.status == 403, host
        assert reply.json()["error"]["type"] == "forbidden_host"
        assert http.post("/prompt", json={"prompt": chain()},
                         headers={"Host": host}).status == 403
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "[::1]:80"):
        assert http.get("/queue", headers={"Host": host}).status == 200, host
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(server.ws_url, host="evil.example", timeout=5)


def test_token_auth(make_server, loop):
    server = make_server(token="s3cret")
    anonymous = Http(server.url, loop)
    wrong = Http(server.url, loop, headers={"Authorization": "Bearer nope"})
    right = Http(server.url, loop, headers={"Authorization": "Bearer s3cret"})
    for client in (anonymous, wrong):
        reply = client.get("/queue")
        assert reply.status == 401 and reply.headers["WWW-Authenticate"] == "Bearer"
        assert reply.json()["error"]["type"] == "unauthorized"
        assert client.post("/prompt", json={"prompt": chain()}).status == 401
        assert client.get("/queue", params={"token": "nope"}).status == 401
    assert right.get("/queue").status == 200
    assert right.post("/prompt", json={"prompt": chain()}).status == 200
    assert anonymous.get("/queue", params={"token": "s3cret"}).status == 200
    assert anonymous.get("/").status == 200  # the canvas page itself is public
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        websocket.create_connection(server.ws_url, timeout=5)
    assert err.value.status_code == 401
    ws = websocket.create_connection(server.ws_url, timeout=5,
                                     header=["Authorization: Bearer s3cret"])
    ws.close()
    ws = websocket.create_connection(server.ws_url + "?token=s3cret", timeout=5)
    ws.close()
    for client in (anonymous, wrong, right):
        client.close()


def test_public_bind_without_token_refuses_to_start(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("STEERFLOW_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="token"):
        ServerConfig(host="0.0.0.0", base_dir=tmp_path).check()
    args = argparse.Namespace(host="0.0.0.0", port=0, base_dir=str(tmp_path))
    assert serve(args) == 2
    assert "without authentication" in capsys.readouterr().err
    ServerConfig(host="0.0.0.0", base_dir=tmp_path, token="t").check()
    ServerConfig(host="::1", base_dir=tmp_path).check()


def test_unexpected_errors_are_json_500_without_traceback(make_server, loop, caplog):
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret internal detail")

    server = make_server(setup_app=lambda app: app.router.add_get("/broken", broken))
    http = Http(server.url, loop)
    reply = http.get("/broken")
    assert reply.status == 500
    assert reply.json()["error"]["type"] == "internal_error"
    assert b"secret" not in reply.body and b"Traceback" not in reply.body
    assert "secret internal detail" in caplog.text  # logged instead
    assert http.get("/queue").status == 200
    assert http.request("DELETE", "/prompt").status == 405
    assert http.request("DELETE", "/prompt").json()["error"]["type"] == "method_not_allowed"
    http.close()


def test_system_stats_hides_the_token_in_the_command_line():
    """A script under the cookie session must not read the raw token the cookie hides."""
    from server.info import _shown_argv

    assert _shown_argv(["steerflow", "serve", "--token", "s3cret", "--port", "8188",
                        "--token=other"]) == ["steerflow", "serve", "--token", "***",
                                              "--port", "8188", "--token=***"]


def test_deeply_nested_websocket_json_is_ignored_quietly(server: LiveServer, caplog):
    ws = websocket.create_connection(server.ws_url + "?clientId=deep", timeout=5)
    try:
        ws.recv()  # status
        with caplog.at_level("ERROR"):
            ws.send("[" * 20000 + "]" * 20000)
            ws.send(json.dumps({"type": "feature_flags", "data": {}}))
            assert json.loads(ws.recv())["type"] == "feature_flags"  # still served
        assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text
    finally:
        ws.close()


def test_log_subscriptions_are_bounded_and_reach_connected_clients_only():
    """200,000 made-up ids made every log line cost seconds."""
    from server.comfy_frontend import MAX_LOG_SUBSCRIBERS, LogBuffer

    class Hub:
        clients = {"real": object()}
        sent: list = []

        def post_event(self, sid, type_, data):
            self.sent.append(sid)

    hub = Hub()
    buffer = LogBuffer(hub)
    buffer.subscribe("real", True)
    for i in range(1000):
        buffer.subscribe(f"fake{i}", True)
    assert len(buffer.subscribers) == MAX_LOG_SUBSCRIBERS
    buffer.subscribe("real", True)  # a re-subscribe makes it the newest
    buffer.output("a line\n")
    assert hub.sent == ["real"]
