"""ComfyUI's per-user file API (server/userdata.py): behaviour, and attacks on it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.server.helpers import Http, LiveServer


def user_dir(server: LiveServer) -> Path:
    return server.base_dir / "user" / "default"


# --- users and settings -----------------------------------------------------------
def test_users_single_user_and_migrated_flag(http: Http) -> None:
    assert http.get("/api/users").json() == {"storage": "server", "migrated": False}
    assert http.post("/api/settings", json={"Comfy.A": 1}).status == 200
    assert http.get("/users").json() == {"storage": "server", "migrated": True}
    reply = http.post("/api/users", json={"username": "bob"})
    assert reply.status == 400 and reply.json()["error"]["type"] == "single_user"


def test_settings_roundtrip(http: Http, server: LiveServer) -> None:
    assert http.get("/api/settings").json() == {}
    assert http.get("/api/settings/Comfy.Missing").json() is None
    assert http.post("/api/settings", json={"Comfy.A": 1, "Comfy.B": "x"}).status == 200
    assert http.post("/api/settings/Comfy.B", json={"nested": [1, 2]}).status == 200
    assert http.post("/settings/Comfy.C", data=b"null").status == 200
    assert http.get("/api/settings").json() == {"Comfy.A": 1, "Comfy.B": {"nested": [1, 2]},
                                                "Comfy.C": None}
    assert http.get("/settings/Comfy.B").json() == {"nested": [1, 2]}
    on_disk = json.loads((user_dir(server) / "comfy.settings.json").read_text())
    assert on_disk["Comfy.A"] == 1
    assert not [p for p in user_dir(server).iterdir() if p.name.startswith(".")]  # no temp


@pytest.mark.parametrize("body, status, kind", [
    (b"[1, 2]", 400, "invalid_settings"),
    (b"{not json", 400, "invalid_json"),
    (b'{"a": "' + b"x" * (3 << 20) + b'"}', 413, "too_large"),
    (b'{"T.big": 1e999}', 400, "invalid_json"),  # written as Infinity: not JSON
    (b'{"T.nan": NaN}', 400, "invalid_json"),
    # a lone surrogate (a string cut inside an emoji): a 500 with a traceback (fuzz drill)
    (b'{"A.b": "x\\udfff"}', 400, "invalid_text"),
    (b'{"\\ud800": 1}', 400, "invalid_text"),
])
def test_settings_bad_bodies(http: Http, server: LiveServer, body: bytes, status: int,
                             kind: str) -> None:
    reply = http.post("/api/settings", data=body)
    assert reply.status == status and reply.json()["error"]["type"] == kind
    assert not (user_dir(server) / "comfy.settings.json").exists()


def test_one_setting_refuses_numbers_json_cannot_hold(http: Http, server: LiveServer) -> None:
    for body in (b"NaN", b"1e999", b"-Infinity"):
        reply = http.post("/api/settings/T.x", data=body)
        assert reply.status == 400 and reply.json()["error"]["type"] == "invalid_json"
    reply = http.post("/settings/Comfy.Foo", data=b'"\\ud800"')
    assert reply.status == 400 and reply.json()["error"]["type"] == "invalid_text"
    assert not (user_dir(server) / "comfy.settings.json").exists()


def test_unreadable_settings_are_kept_aside(http: Http, server: LiveServer) -> None:
    folder = user_dir(server)
    folder.mkdir(parents=True)
    (folder / "comfy.settings.json").write_text("{broken")
    assert http.get("/api/settings").json() == {}  # the page still loads
    assert http.post("/api/settings/Comfy.A", json=2).status == 200
    assert http.get("/api/settings").json() == {"Comfy.A": 2}
    kept = [p for p in folder.iterdir() if ".unreadable-" in p.name]
    assert len(kept) == 1 and kept[0].read_text() == "{broken"


def test_setting_id_is_bounded(http: Http) -> None:
    reply = http.post("/api/settings/" + "x" * 300, json=1)
    assert reply.status == 400 and reply.json()["error"]["type"] == "invalid_setting_id"


# --- user data files --------------------------------------------------------------
def test_userdata_save_list_get_move_delete(http: Http, server: LiveServer) -> None:
    assert http.get("/api/userdata?dir=workflows").json() == []  # fresh install: no 404
    reply = http.post("/api/userdata/workflows%2Fa.json", data=b'{"nodes": []}')
    assert reply.status == 200 and reply.json() == "workflows/a.json"
    reply = http.post("/api/userdata/workflows%2Fsub%2Fb.json?full_info=true", data=b"{}")
    info = reply.json()
    assert info["path"] == "workflows/sub/b.json" and info["size"] == 2
    assert isinstance(info["modified"], int)
    assert http.get("/api/userdata?dir=workflows").json() == ["a.json"]
    assert http.get("/api/userdata?dir=workflows&recurse=true").json() == [
        "a.json", "sub/b.json"]
    assert http.get("/api/userdata?dir=workflows&recurse=true&split=true").json() == [
        ["a.json", "a.json"], ["sub/b.json", "sub", "b.json"]]
    full = http.get("/api/userdata?dir=workflows&recurse=true&full_info=true").json()
    assert [f["path"] for f in full] == ["a.json", "sub/b.json"]
    got = http.get("/api/userdata/workflows%2Fa.json")
    assert got.status == 200 and got.body == b'{"nodes": []}'
    assert got.headers["Content-Disposition"] == "attachment"
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    v2 = http.get("/api/v2/userdata?path=workflows").json()
    assert [(e["name"], e["type"]) for e in v2] == [("sub", "directory"), ("a.json", "file"),
                                                   ("b.json", "file")]

    # overwrite=false refuses an existing name; the default replaces it
    reply = http.post("/api/userdata/workflows%2Fa.json?overwrite=false", data=b"new")
    assert reply.status == 409 and reply.json()["error"]["type"] == "file_exists"
    assert http.get("/api/userdata/workflows%2Fa.json").body == b'{"nodes": []}'
    assert http.post("/api/userdata/workflows%2Fa.json", data=b"v2").status == 200
    assert http.get("/userdata/workflows%2Fa.json").body == b"v2"

    # move across folders; overwrite=false protects the destination
    reply = http.post("/api/userdata/workflows%2Fa.json/move/other%2Fdeep%2Fc.json")
    assert reply.status == 200 and reply.json() == "other/deep/c.json"
    assert (user_dir(server) / "other" / "deep" / "c.json").read_bytes() == b"v2"
    assert not (user_dir(server) / "workflows" / "a.json").exists()
    reply = http.post("/api/userdata/other%2Fdeep%2Fc.json/move/workflows%2Fsub%2Fb.json"
                      "?overwrite=false")
    assert reply.status == 409
    assert (user_dir(server) / "other" / "deep" / "c.json").exists()
    reply = http.post("/api/userdata/other%2Fdeep%2Fc.json/move/workflows%2Fsub%2Fb.json"
                      "?full_info=true")
    assert reply.status == 200 and reply.json()["path"] == "workflows/sub/b.json"
    assert (user_dir(server) / "workflows" / "sub" / "b.json").read_bytes() == b"v2"
    assert http.post("/api/userdata/nope.json/move/x.json").status == 404

    assert http.request("DELETE", "/api/userdata/workflows%2Fsub%2Fb.json").status == 204
    assert http.request("DELETE", "/api/userdata/workflows%2Fsub%2Fb.json").status == 404
    assert http.request("DELETE", "/api/userdata/workflows").status == 400  # a folder
    assert http.get("/api/userdata/workflows%2Fsub%2Fb.json").status == 404
    assert http.get("/api/userdata").status == 400  # dir is required
    leftovers = [p for p in user_dir(server).rglob(".upload-*")]
    assert leftovers == []


TRAVERSALS = [
    "..%2F..%2Fdata%2Fsteerflow.db",
    "%2E%2E%2Fescape.json",
    "workflows%2F..%2F..%2Fescape.json",
    "%252E%252E%252Fescape.json",  # encoded twice
    "%2Fetc%2Fpasswd",
    "workflows%5C..%5C..%5Cescape.json",
    "a%00b.json",
    "a%0Ab.json",
    "workflows%2F%2Fa.json",
    "workflows%2F.%2Fa.json",
    "x" * 300 + ".json",
    "%2F".join(["d"] * 20) + "%2Fa.json",
]


def test_a_file_in_the_way_of_a_folder_is_a_409_not_a_500(http: Http) -> None:
    """Saving or moving to x.json/y.json where x.json is a file was a 500 'File exists'."""
    assert http.post("/api/userdata/workflows%2Fm1.json", data=b"{}").status == 200
    for reply in (http.post("/api/userdata/workflows%2Fm1.json%2Fx.json", data=b"{}"),
                  http.post("/api/userdata/workflows%2Fm1.json/move/"
                            "workflows%2Fm1.json%2Fx.json")):
        assert reply.status == 409, reply.body
        assert "in the way" in reply.json()["error"]["message"]
    assert http.get("/api/userdata/workflows%2Fm1.json").body == b"{}"  # nothing lost
    # nothing is in the way of a delete: no such file
    assert http.request("DELETE", "/api/userdata/workflows%2Fm1.json%2Fx.json").status == 404


def test_userdata_lists_as_comfyui_globs(http: Http, server: LiveServer) -> None:
    """No dot files or folders; "yes" is not "true" (ComfyUI's reading of its flags)."""
    for name in ("a.json", "sub/b.json", ".hidden.json", ".git/x.json"):
        path = user_dir(server) / "workflows" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    assert http.get("/api/userdata?dir=workflows&recurse=true").json() == [
        "a.json", "sub/b.json"]
    assert http.get("/api/userdata?dir=workflows&recurse=yes").json() == ["a.json"]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_userdata_refuses_bad_names(http: Http, server: LiveServer, name: str) -> None:
    before = sorted(p for p in server.base_dir.rglob("*"))
    for method, path in [("POST", f"/api/userdata/{name}"), ("GET", f"/api/userdata/{name}"),
                         ("DELETE", f"/api/userdata/{name}"),
                         ("POST", f"/api/userdata/{name}/move/ok.json"),
                         ("GET", f"/api/userdata?dir={name}")]:
        reply = http.request(method, path, raw=True, data=b"{}")
        if "?dir=%25" in path.replace("%252E", "%25"):
            # a query is decoded once: "%2E%2E%2F..." is a harmless literal folder name
            assert reply.status == 200 and reply.json() == []
            continue
        assert reply.status in (400, 403, 404), (method, path, reply.status)
        if reply.status != 404:
            assert reply.json()["error"]["type"] in ("invalid_path", "forbidden_path")
    assert not list(server.base_dir.parent.glob("escape.json"))
    assert not (server.base_dir / "escape.json").exists()
    after = sorted(p for p in server.base_dir.rglob("*"))
    assert [p for p in after if p not in before and "user" not in p.parts] == []


def test_userdata_symlinks_cannot_leave_the_user_folder(http: Http, server: LiveServer,
                                                        tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text('{"secret": 1}')
    folder = user_dir(server)
    (folder / "workflows").mkdir(parents=True)
    os.symlink(outside, folder / "linkdir")
    os.symlink(outside / "secret.json", folder / "workflows" / "leak.json")
    (folder / "workflows" / "ok.json").write_text("{}")

    assert http.get("/api/userdata/workflows%2Fleak.json").status == 403
    assert http.get("/api/userdata/linkdir%2Fsecret.json").status == 403
    assert http.post("/api/userdata/linkdir%2Fnew.json", data=b"{}").status == 403
    assert http.post("/api/userdata/workflows%2Fok.json/move/linkdir%2Fok.json").status == 403
    assert http.request("DELETE", "/api/userdata/workflows%2Fleak.json").status == 403
    assert http.get("/api/userdata?dir=linkdir").status == 403
    assert http.get("/api/userdata?dir=workflows&recurse=true").json() == ["ok.json"]
    names = [e["name"] for e in http.get("/api/v2/userdata").json()]
    assert "leak.json" not in names
    assert sorted(p.name for p in outside.iterdir()) == ["secret.json"]
    assert (outside / "secret.json").read_text() == '{"secret": 1}'


def test_userdata_huge_body_is_refused(make_server: Callable[..., LiveServer],
                                       loop: object) -> None:
    server = make_server(max_prompt_bytes=4096)
    http = Http(server.url, loop)  # type: ignore[arg-type]
    try:
        reply = http.post("/api/userdata/workflows%2Fbig.json", data=b"x" * 10_000)
        assert reply.status == 413
        # chunked (no Content-Length): refused while reading, nothing written
        async def gen():
            for _ in range(10):
                yield b"x" * 1000
        reply = http.post("/api/userdata/workflows%2Fbig.json", data=gen())
        assert reply.status == 413
        folder = user_dir(server) / "workflows"
        assert not folder.exists() or list(folder.iterdir()) == []
        assert http.post("/api/userdata/workflows%2Fsmall.json", data=b"{}").status == 200
    finally:
        http.close()


def test_user_css_is_empty_until_written(http: Http) -> None:
    for path in ("/user.css", "/api/userdata/user.css"):
        reply = http.get(path)
        assert reply.status == 200 and reply.body == b""
        assert reply.headers["Content-Type"].startswith("text/css")
    assert http.post("/api/userdata/user.css", data=b"body{color:red}").status == 200
    reply = http.get("/user.css")
    assert reply.body == b"body{color:red}" and reply.headers["Content-Disposition"] == "inline"


def test_a_move_that_loses_a_race_is_a_404(tmp_path, monkeypatch) -> None:
    """The fuzz drill: of ten concurrent moves of one file, some losers got a 500
    "move_failed" (the source vanished between the check and the link)."""
    from server import userdata
    from server.errors import ApiError

    root = tmp_path.resolve()
    source = root / "a.json"
    source.write_text("{}")

    def another_move_won(src, dest):
        (root / "won.json").write_text(src.read_text())
        src.unlink()
        raise FileNotFoundError(2, "No such file or directory", str(src))

    monkeypatch.setattr(userdata, "_link_if_absent", another_move_won)
    with pytest.raises(ApiError) as lost:
        userdata._move(root, source, root / "b.json", overwrite=False)
    assert lost.value.status == 404
    assert sorted(p.name for p in root.iterdir()) == ["won.json"]
