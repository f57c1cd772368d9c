"""Security drill fixes: allowed origins are scheme://host[:port] and never match
``Origin: null`` (§1), /workflow/convert is sized by what subgraphs unpack to (§2), the
user folder's half-written saves are swept at start (§3), upload forms have few parts
(§4), the settings file is capped (§6), and blank or short tokens are refused (§8)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server import convert, userdata
from server.config import ConfigError, ServerConfig
from server.files import MAX_FORM_PARTS
from steerflow.cli import main
from tests.server.helpers import Http, LiveServer, chain


# --- §1 allowed origins -------------------------------------------------------------
@pytest.mark.parametrize("value", ["*", "null", "myhost", "", "localhost:5173",
                                   "http://a.example/path", "http://user@a.example",
                                   "http://*", "http://a.example:99999"])
def test_serve_refuses_an_allowed_origin_that_is_not_one(tmp_path, capsys, monkeypatch,
                                                         value):
    monkeypatch.delenv("STEERFLOW_ALLOW_ORIGINS", raising=False)
    capsys.readouterr()
    assert main(["serve", "--allow-origin", value, "--base-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --allow-origin") and "scheme://host[:port]" in err, err
    assert len(err.splitlines()) == 1
    monkeypatch.setenv("STEERFLOW_ALLOW_ORIGINS", "http://localhost:5173,*")
    assert main(["serve", "--base-dir", str(tmp_path)]) == 2
    assert "'*' is not an origin" in capsys.readouterr().err


def test_allowed_origins_are_normalized():
    config = ServerConfig(allow_origins=frozenset({"HTTP://LocalHost:80/", "http://[::1]:5173",
                                                   "app://steerflow"}))
    assert config.allow_origins == {"http://localhost", "http://[::1]:5173", "app://steerflow"}


def test_origin_null_never_matches_an_allowed_origin(make_server, loop):
    server = make_server(allow_origins=frozenset({"http://localhost:5173"}))
    http = Http(server.url, loop)
    body = json.dumps({"prompt": chain()})
    for origin in ("null", "NULL ", "http://localhost:5173/x"):
        reply = http.post("/prompt", data=body, headers={"Origin": origin})
        assert reply.status == 403, origin
        assert reply.json()["error"]["type"] == "cross_origin"
    assert http.post("/prompt", data=body,
                     headers={"Origin": "http://localhost:5173"}).status == 200
    http.close()


# --- §8 tokens ----------------------------------------------------------------------
@pytest.mark.parametrize(("token", "message"), [(" ", "blank"), ("\t  ", "blank"),
                                                (" s3cret-token", "whitespace"),
                                                ("short", "at least 8 characters")])
def test_serve_refuses_a_blank_or_short_token(tmp_path, capsys, monkeypatch, token, message):
    monkeypatch.delenv("STEERFLOW_TOKEN", raising=False)
    capsys.readouterr()
    for args, env in ((["--token", token], None), ([], token)):
        if env is not None:
            monkeypatch.setenv("STEERFLOW_TOKEN", env)
        assert main(["serve", "--host", "0.0.0.0", *args, "--base-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    with pytest.raises(ConfigError, match="blank"):
        ServerConfig(base_dir=tmp_path, token="   ").check()


def test_a_blank_query_token_never_authenticates(make_server, loop):
    server = make_server(token="s3cret-token")
    http = Http(server.url, loop)
    for query in ({"token": " "}, {"token": ""}, {"token": "s3cret-token "}):
        assert http.get("/queue", params=query).status == 401, query
    assert http.get("/queue", params={"token": "s3cret-token"}).status == 200
    http.close()


# --- §2 /workflow/convert -----------------------------------------------------------
def nested_subgraphs(levels: int, fan: int) -> dict[str, Any]:
    """Subgraph ``sg<k>`` holds ``fan`` instances of ``sg<k-1>``; ``sg0`` one node: the
    workflow unpacks to ``fan ** levels`` nodes (plus its Preview Image)."""
    def instance(i: int, kind: str) -> dict[str, Any]:
        return {"id": i, "type": kind, "pos": [0, 0], "size": [100, 100], "mode": 0,
                "inputs": [], "outputs": [], "widgets_values": []}

    subs = [{"id": "sg0", "name": "sg0", "links": [], "inputs": [], "outputs": [],
             "nodes": [{**instance(1, "TestSource"), "widgets_values": [1, "a", "a"],
                        "outputs": [{"name": "INT", "type": "INT", "links": []}]}]}]
    subs += [{"id": f"sg{k}", "name": f"sg{k}", "links": [], "inputs": [], "outputs": [],
              "nodes": [instance(i + 1, f"sg{k - 1}") for i in range(fan)]}
             for k in range(1, levels + 1)]
    return {"nodes": [instance(1, f"sg{levels}"), instance(2, "PreviewImage")], "links": [],
            "definitions": {"subgraphs": subs}, "version": 0.4, "extra": {}}


def test_unpacked_size_counts_what_subgraphs_and_group_nodes_unpack_to():
    assert convert.unpacked_size(nested_subgraphs(2, 3), 10**9) == 9 + 1
    assert convert.unpacked_size(nested_subgraphs(3, 20), 10**9) == 8000 + 1
    # a billion laughs (30^9 nodes) is counted per definition, not per node, and the count
    # stops at the cap: it returns at all
    assert convert.unpacked_size(nested_subgraphs(9, 30), 10_000) > 10_000
    looped = nested_subgraphs(1, 2)
    looped["definitions"]["subgraphs"][0]["nodes"].append(
        {"id": 2, "type": "sg1", "pos": [0, 0]})  # contains itself: left out
    assert convert.unpacked_size(looped, 100) == 2 + 1
    group = {"nodes": [{"id": 1, "type": "workflow>Pair", "pos": [0, 0]}] * 3, "links": [],
             "extra": {"groupNodes": {"Pair": {"nodes": [{"type": "A"}, {"type": "B"}]}}}}
    assert convert.unpacked_size(group, 100) == 6
    assert convert.unpacked_size({"prompt": chain()}, 100) == 3
    assert convert.unpacked_size(chain(), 100) == 3


def test_a_subgraph_bomb_is_refused_and_never_stalls_the_server(
        http: Http, server: LiveServer, monkeypatch: pytest.MonkeyPatch):
    """A bomb is refused before any unpacking; a large workflow converts off the event
    loop: while its conversion is held, other requests are answered."""
    reply = http.post("/workflow/convert", json=nested_subgraphs(5, 10))  # 100,000 nodes
    assert reply.status == 413
    error = reply.json()["error"]
    assert error["type"] == "workflow_too_large"
    assert error["extra_info"]["limit_nodes"] == convert.MAX_CONVERT_NODES

    held, release = threading.Event(), threading.Event()
    real = convert._convert

    def slow(*args: Any, **kwargs: Any) -> str:
        held.set()
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(convert, "_convert", slow)
    replies: list[Any] = []
    poster = threading.Thread(target=lambda: replies.append(http.post(
        "/workflow/convert", json={"workflow": nested_subgraphs(2, 60)})), daemon=True)
    poster.start()
    try:
        assert held.wait(60), "the conversion never started"
        # the conversion is still running: the server answers meanwhile
        assert http.get("/system_stats").status == 200
        assert poster.is_alive()
    finally:
        release.set()
        poster.join(60)
    [reply] = replies
    assert reply.status == 200, reply.body[:300]
    assert len(reply.json()["document"]["prompt"]) == 60 * 60 + 1


# --- §3 user-data leftovers ---------------------------------------------------------
def test_start_up_sweeps_half_written_user_data_saves(make_server, tmp_path):
    folder = tmp_path / "user" / "default" / "workflows"
    folder.mkdir(parents=True)
    ours = [folder / ".upload-fv78glq9.part", folder.parent / ".upload-a_b1c2d3.part"]
    kept = [folder / "a.json", folder / ".hidden.json", folder / ".upload-x.part",
            folder / ".upload-fv78glq9.part.json", folder / "upload-fv78glq9.part"]
    for path in ours + kept:
        path.write_bytes(b"{}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".upload-abcdefgh.part").write_bytes(b"x")
    os.symlink(outside, folder / "linked")
    make_server(base_dir=tmp_path)
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in kept)
    assert (outside / ".upload-abcdefgh.part").exists()  # never through a symlink
    fresh = folder / ".upload-12345678.part"
    fresh.write_bytes(b"x")
    assert userdata.remove_leftovers(tmp_path / "user", older_than=60) == []
    assert userdata.remove_leftovers(tmp_path / "user") == [fresh]
    assert userdata.remove_leftovers(tmp_path / "missing") == []


# --- §4 upload forms ----------------------------------------------------------------
@pytest.mark.parametrize("route", ["/upload/image", "/upload/mask"])
def test_an_upload_form_with_too_many_parts_is_refused(http: Http, route: str):
    form = aiohttp.FormData()
    for i in range(MAX_FORM_PARTS + 1):
        form.add_field(f"f{i}", "x")
    form.add_field("image", b"\x89PNG", filename="a.png", content_type="image/png")
    reply = http.post(route, data=form)
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    assert error["type"] == "too_many_fields"
    assert error["extra_info"]["limit_parts"] == MAX_FORM_PARTS


# --- §6 settings --------------------------------------------------------------------
def test_the_settings_file_is_capped(http: Http, server: LiveServer,
                                     monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(userdata, "SETTINGS_FILE_LIMIT", 64 << 10)
    value = json.dumps("x" * (20 << 10))
    for i in range(3):
        assert http.post(f"/settings/big{i}", data=value).status == 200
    reply = http.post("/settings/big3", data=value)
    assert reply.status == 413
    error = reply.json()["error"]
    assert error["type"] == "settings_too_large" and "limit" in error["message"]
    assert error["extra_info"]["limit_bytes"] == 64 << 10
    path: Path = server.base_dir / "user" / "default" / userdata.SETTINGS_FILE
    assert path.stat().st_size <= 64 << 10
    assert set(http.get("/settings").json()) == {"big0", "big1", "big2"}
    # a change that does not grow it passes (also for a file over the limit from before)
    monkeypatch.setattr(userdata, "SETTINGS_FILE_LIMIT", 1 << 10)
    assert http.post("/settings/big0", data=json.dumps("small")).status == 200
    assert http.post("/settings/new", data=value).status == 413


def test_allowed_origins_from_the_environment_split_on_commas_and_spaces(monkeypatch):
    import argparse

    monkeypatch.setenv("STEERFLOW_ALLOW_ORIGINS",
                       "http://a.example http://b.example:8080,  http://c.example")
    config = ServerConfig.from_args(argparse.Namespace(allow_origin=["http://d.example"]))
    assert config.allow_origins == {"http://a.example", "http://b.example:8080",
                                    "http://c.example", "http://d.example"}


def test_an_allowed_origin_gets_cors_headers_and_others_none(make_server, loop):
    """A page on an allow-listed origin may call the API directly (ComfyUI's
    --enable-cors-header): its preflight is answered, before any token check, and every
    response to it, errors included, names it; other origins get nothing."""
    server = make_server(allow_origins=frozenset({"http://localhost:5173"}), token="t0ken-long")
    http = Http(server.url, loop)
    ok = {"Origin": "http://localhost:5173"}
    preflight = http.request("OPTIONS", "/prompt", headers={
        **ok, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, authorization"})
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == "content-type, authorization"
    auth = {**ok, "Authorization": "Bearer t0ken-long"}
    assert http.get("/queue", headers=auth).headers["Access-Control-Allow-Origin"] == \
        "http://localhost:5173"
    refused = http.post("/prompt", data="{", headers=auth)  # an error names it too
    assert refused.status == 400 and refused.headers["Access-Control-Allow-Origin"] == \
        "http://localhost:5173"
    other = http.request("OPTIONS", "/prompt", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert other.status == 403 and "Access-Control-Allow-Origin" not in other.headers
    same = http.get("/queue", headers={"Authorization": "Bearer t0ken-long"})
    assert "Access-Control-Allow-Origin" not in same.headers
    http.close()
