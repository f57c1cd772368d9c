"""Full and read-only disks as a fault drill found them: every refusal structured, never a
500, and what the server writes readable as a plain ``open`` would leave it."""

from __future__ import annotations

import errno
import io
import json
import stat

import aiohttp
import pytest
from PIL import Image

import server.userdata as userdata
from server.files import FILE_MODE
from tests.server.helpers import Http, LiveServer


def _failing(code: int):
    def write(*args, **kwargs):
        raise OSError(code, {errno.ENOSPC: "No space left on device",
                             errno.EROFS: "Read-only file system"}[code])
    return write


@pytest.mark.parametrize(("code", "status"), [(errno.ENOSPC, 507), (errno.EROFS, 403)])
def test_settings_and_userdata_saves_on_a_full_or_read_only_disk(http: Http, monkeypatch,
                                                                  code: int, status: int):
    monkeypatch.setattr(userdata, "_write", _failing(code))
    for path, body in [("/settings", {"Comfy.X": 1}), ("/settings/Comfy.X", 2)]:
        reply = http.post(path, json=body)
        assert reply.status == status, (path, reply.body)
        assert reply.json()["error"]["type"] == "write_failed"
        assert "cannot save the settings" in reply.json()["error"]["message"]
    reply = http.post("/userdata/workflows%2Fa.json", data=b"{}")
    assert reply.status == status and reply.json()["error"]["type"] == "write_failed"


def test_deleting_user_data_on_a_read_only_disk_is_refused_cleanly(http: Http, monkeypatch):
    assert http.post("/userdata/workflows%2Fb.json", data=b"{}").status == 200
    real_unlink = userdata.Path.unlink

    def read_only(self, *args, **kwargs):
        if self.name == "b.json":
            raise OSError(errno.EROFS, "Read-only file system")
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(userdata.Path, "unlink", read_only)
    reply = http.request("DELETE", "/userdata/workflows%2Fb.json")
    assert reply.status == 403 and reply.json()["error"]["type"] == "delete_failed"


def test_settings_nested_past_the_parser_read_as_none_and_are_kept_aside(server: LiveServer,
                                                                         http: Http):
    root = server.base_dir / "user" / "default"
    root.mkdir(parents=True, exist_ok=True)
    (root / "comfy.settings.json").write_text("[" * 5000 + "]" * 5000)
    assert http.get("/settings").json() == {}
    assert http.post("/settings", json={"Comfy.Y": True}).status == 200
    assert http.get("/settings").json() == {"Comfy.Y": True}
    assert list(root.glob("comfy.settings.json.unreadable-*"))


def test_history_changes_on_a_failing_database_are_a_503(server: LiveServer, http: Http,
                                                         monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "database or disk is full")

    monkeypatch.setattr(server.state.storage, "delete_history", full)
    reply = http.post("/history", json={"clear": True})
    assert reply.status == 503 and reply.json()["error"]["type"] == "history_unavailable"


def test_uploads_and_user_files_get_a_plain_files_mode(server: LiveServer, http: Http):
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    form = aiohttp.FormData()
    form.add_field("image", buf.getvalue(), filename="mode.png", content_type="image/png")
    assert http.post("/upload/image", data=form).status == 200
    assert http.post("/userdata/workflows%2Fm.json", data=json.dumps({}).encode()).status == 200
    for path in (server.base_dir / "input" / "mode.png",
                 server.base_dir / "user" / "default" / "workflows" / "m.json"):
        assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE, path
