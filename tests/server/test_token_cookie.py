"""Token auth for a browser app that cannot send the token (ComfyUI's official
frontend): ``/?token=T`` once sets an HttpOnly, SameSite=Strict cookie that
authenticates later HTTP and websocket requests."""

from __future__ import annotations

import logging
from http.cookies import SimpleCookie

import pytest
import websocket

from server.security import cookie_value
from tests.server.helpers import Http, chain


def _sign_in(http: Http, query: dict[str, str]) -> tuple[int, str, SimpleCookie]:
    reply = http.get("/", params=query, allow_redirects=False)
    cookie: SimpleCookie = SimpleCookie()
    for header in reply.headers.getall("Set-Cookie", []):
        cookie.load(header)
    return reply.status, reply.headers.get("Location", ""), cookie


def test_the_token_in_the_page_url_once_sets_a_cookie(make_server, loop, caplog):
    caplog.set_level(logging.DEBUG)
    server = make_server(token="s3cret")
    anonymous = Http(server.url, loop)
    name = f"steerflow_token_{server.port}"
    assert anonymous.get("/queue").status == 401
    assert anonymous.get("/").status == 200  # the page itself stays public

    status, location, cookie = _sign_in(anonymous, {"token": "s3cret", "lang": "fr"})
    assert status == 303
    assert location == "./?lang=fr"  # relative (a proxy's prefix survives), token gone
    morsel = cookie[name]
    assert morsel.value == cookie_value("s3cret") and "s3cret" not in morsel.value
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/"
    assert not morsel["secure"]  # plain http on loopback

    browser = Http(server.url, loop, headers={"Cookie": f"{name}={morsel.value}"})
    assert browser.get("/queue").status == 200
    assert browser.post("/prompt", json={"prompt": chain()},
                        headers={"Origin": server.url}).status == 200
    ws = websocket.create_connection(server.ws_url, timeout=5,
                                     cookie=f"{name}={morsel.value}")
    ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        websocket.create_connection(server.ws_url, timeout=5, cookie=f"{name}=forged")
    assert err.value.status_code == 401

    # a wrong cookie, a cookie of another port, a wrong token in the page URL: refused
    for header in (f"{name}=forged", f"{name}=", f"steerflow_token_1={morsel.value}"):
        wrong = Http(server.url, loop, headers={"Cookie": header})
        reply = wrong.get("/queue")
        assert reply.status == 401 and reply.json()["error"]["type"] == "unauthorized"
        wrong.close()
    status, _, cookie = _sign_in(anonymous, {"token": "nope"})
    assert status == 401 and name not in cookie
    assert "s3cret" not in caplog.text
    for client in (anonymous, browser):
        client.close()


def test_without_a_token_the_page_url_token_is_ignored(server, http):
    reply = http.get("/", params={"token": "x"}, allow_redirects=False)
    assert reply.status == 200 and "Set-Cookie" not in reply.headers
