"""/view and /upload/image: confinement, image-only serving, upload checks."""

from __future__ import annotations

import io

import aiohttp
import pytest
from PIL import Image

from tests.server.helpers import Http, LiveServer


def png(color: tuple[int, int, int] = (1, 2, 3), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format=fmt)
    return buf.getvalue()


def raw_form(data: bytes, filename: str) -> tuple[bytes, dict[str, str]]:
    """A multipart body written by hand, so the file name reaches the server verbatim."""
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\""
            + filename.encode() + b"\"\r\nContent-Type: image/png\r\n\r\n" + data
            + b"\r\n--XyZ--\r\n")
    return body, {"Content-Type": "multipart/form-data; boundary=XyZ"}


def form(data: bytes, filename: str = "pic.png", **fields: str) -> aiohttp.FormData:
    body = aiohttp.FormData()
    body.add_field("image", data, filename=filename, content_type="application/octet-stream")
    for key, value in fields.items():
        body.add_field(key, value)
    return body


@pytest.fixture
def outside(server: LiveServer):
    """A secret image next to (not inside) the data folders."""
    secret = server.base_dir.parent / f"{server.base_dir.name}-secret.png"
    secret.write_bytes(png())
    return secret


def test_upload_then_view(http: Http):
    reply = http.post("/upload/image", data=form(png(), "my pic.png", subfolder="sub"))
    assert reply.status == 200
    assert reply.json() == {"name": "my pic.png", "subfolder": "sub", "type": "input"}
    view = http.get("/view", params={"filename": "my pic.png", "subfolder": "sub",
                                     "type": "input"})
    assert view.status == 200 and view.body == png()
    assert "filename*=UTF-8''my%20pic.png" in view.headers["Content-Disposition"]


def test_an_escaped_slash_in_an_upload_name_is_kept_not_cut_at(http: Http):
    """'report%2Ffinal.png' became 'final.png' (decoded, then cut at the slash); other
    escapes (a browser's %22, aiohttp's %20) are still decoded."""
    for sent, kept in (("report%2Ffinal.png", "report%2Ffinal.png"),
                       ("my%20pic.png", "my pic.png")):
        body, headers = raw_form(png((7, 7, 7)), sent)
        reply = http.post("/upload/image", data=body, headers=headers)
        assert reply.status == 200 and reply.json()["name"] == kept, reply.body


def test_upload_names_dedupe_and_overwrite(server: LiveServer, http: Http):
    first = http.post("/upload/image", data=form(png((1, 1, 1)), "a.png")).json()
    same = http.post("/upload/image", data=form(png((1, 1, 1)), "a.png")).json()
    other = http.post("/upload/image", data=form(png((9, 9, 9)), "a.png")).json()
    assert (first["name"], same["name"], other["name"]) == ("a.png", "a.png", "a (1).png")
    over = http.post("/upload/image", data=form(png((5, 5, 5)), "a.png", overwrite="true"))
    assert over.json()["name"] == "a.png"
    assert (server.base_dir / "input" / "a.png").read_bytes() == png((5, 5, 5))
    # Path parts, control characters and dotfiles are stripped; the suffix follows the data.
    body, headers = raw_form(png(fmt="JPEG"), "..\\..\\x<y>|.png")
    odd = http.post("/upload/image", data=body, headers=headers).json()
    assert odd["name"] == "xy.jpg"
    hidden = http.post("/upload/image", data=form(png(), ".htaccess")).json()
    assert hidden["name"] == "htaccess.png"
    body, headers = raw_form(png(), "x\x07y.png")  # control characters: a bad header
    assert http.post("/upload/image", data=body, headers=headers).status == 400


@pytest.mark.parametrize("data,name", [
    (b"<html><script>alert(1)</script></html>", "evil.png"),
    (b"GIF89a<script>alert(1)</script>", "evil.gif"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "truncated.png"),
    (b"", "empty.png"),
])
def test_non_images_are_refused(server: LiveServer, http: Http, data: bytes, name: str):
    reply = http.post("/upload/image", data=form(data, name))
    assert reply.status == 415
    assert reply.json()["error"]["type"] == "not_an_image"
    assert not any((server.base_dir / "input").glob("*")) if (
        server.base_dir / "input").exists() else True


def test_upload_size_cap(make_server, loop):
    server = make_server(max_upload_bytes=2000)
    http = Http(server.url, loop)
    big = io.BytesIO()
    Image.effect_noise((64, 64), 50).save(big, format="PNG")
    reply = http.post("/upload/image", data=form(big.getvalue()))
    assert reply.status == 413 and reply.json()["error"]["type"] == "too_large"
    assert http.post("/upload/image", data=form(png())).status == 200
    http.close()


def test_upload_form_errors(http: Http):
    assert http.post("/upload/image", data=b"not a form").status == 400
    long_field = http.post("/upload/image", data=form(png(), subfolder="a" * 5000))
    assert long_field.status == 413
    assert "form field 'subfolder' is over 4096 bytes" in long_field.json()["error"]["message"]
    text = http.post("/upload/image", data=form(b"hello world"))  # a .png that is not one
    assert text.status == 415
    message = text.json()["error"]["message"]
    assert "not a readable image" in message and "0x" not in message and "_io" not in message
    assert http.post("/upload/image", data=form(png(), type="models")).status == 400
    body = aiohttp.FormData()
    body.add_field("subfolder", "x")
    body.add_field("other", b"x", filename="x.txt")  # a file, but not 'image'
    assert http.post("/upload/image", data=body).json()["error"]["type"] == "missing_image"


@pytest.mark.parametrize("subfolder", ["../escape", "/tmp", "a/../../escape", ".hidden",
                                       "..\\escape"])
def test_upload_subfolder_traversal_refused(server: LiveServer, http: Http, subfolder: str):
    reply = http.post("/upload/image", data=form(png(), subfolder=subfolder))
    assert reply.status == 403, reply.body
    assert not (server.base_dir / "escape").exists()


def test_upload_through_symlinked_subfolder_refused(server: LiveServer, http: Http, tmp_path):
    (server.base_dir / "input").mkdir(exist_ok=True)
    (server.base_dir / "input" / "link").symlink_to(tmp_path)
    reply = http.post("/upload/image", data=form(png(), subfolder="link"))
    assert reply.status == 403
    assert list(tmp_path.iterdir()) == []


def test_view_traversal_refused(server: LiveServer, http: Http, outside):
    out = server.base_dir / "output"
    out.mkdir(exist_ok=True)
    (out / "ok.png").write_bytes(png())
    (out / "link.png").symlink_to(outside)
    (out / "dirlink").symlink_to(outside.parent)
    name = outside.name
    attempts = [
        {"filename": f"../../{name}"},
        {"filename": name, "subfolder": ".."},
        {"filename": str(outside)},
        {"filename": name, "subfolder": str(outside.parent)},
        {"filename": "link.png"},
        {"filename": name, "subfolder": "dirlink"},
        {"filename": "ok.png", "type": "../output"},
    ]
    for params in attempts:
        reply = http.get("/view", params=params)
        assert reply.status in (400, 403), (params, reply.status)
        assert "error" in reply.json()
    encoded = [f"/view?filename=%2e%2e%2f%2e%2e%2f{name}",
               f"/view?filename={name}&subfolder=%2e%2e",
               f"/view?filename=%2E%2E%2F%2E%2E%2F{name}&type=output",
               "/view?filename=ok.png%00.txt"]
    for path in encoded:
        assert http.get(path, raw=True).status in (400, 403), path
    assert http.get("/view", params={"filename": "ok.png"}).status == 200


def test_view_serves_real_images_and_other_files_only_as_downloads(server: LiveServer,
                                                                   http: Http):
    out = server.base_dir / "output"
    out.mkdir(exist_ok=True)
    (out / "page.html").write_text("<script>alert(1)</script>")
    (out / "fake.png").write_text("<script>alert(1)</script>")
    (out / "pic.jpg").write_bytes(png(fmt="JPEG"))
    (out / "x_00001_.exr").write_bytes(b"\x76\x2f\x31\x01 an EXR")
    page = http.get("/view", params={"filename": "page.html"})
    assert page.status == 200  # a download, never a page: no script can run
    assert page.headers["Content-Type"] == "application/octet-stream"
    assert page.headers["Content-Disposition"].startswith("attachment;")
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    exr = http.get("/view", params={"filename": "x_00001_.exr"})  # Save Image (Advanced)
    assert exr.status == 200 and exr.headers["Content-Type"] == "image/x-exr"
    assert http.get("/view", params={"filename": "missing.exr"}).status == 404
    assert http.get("/view", params={"filename": "fake.png"}).status == 404
    assert http.get("/view", params={"filename": "missing.png"}).status == 404
    assert http.get("/view", params={}).status == 400
    jpg = http.get("/view", params={"filename": "pic.jpg"})
    assert jpg.status == 200 and jpg.headers["Content-Type"] == "image/jpeg"
    assert "sandbox" in jpg.headers["Content-Security-Policy"]
    gif = http.get("/view", params={"filename": "pic.jpg", "preview": "gif"})  # as ComfyUI
    assert gif.status == 200 and gif.headers["Content-Type"] == "image/webp"
    rgb = http.get("/view", params={"filename": "pic.jpg", "channel": "rgb"})
    assert rgb.status == 200 and rgb.headers["Content-Type"] == "image/png"
    alpha = http.get("/view", params={"filename": "pic.jpg", "channel": "a",
                                      "preview": "jpeg;80"})
    assert alpha.status == 200 and alpha.headers["Content-Type"] == "image/webp"


def test_view_reads_comfyuis_annotated_names(server: LiveServer, http: Http, outside):
    """ComfyUI's frontend previews a Load Image value such as
    "clipspace/clipspace-mask-1.png [input]" (what its mask editor leaves) as
    /view?filename=clipspace-mask-1.png [input]&type=input&subfolder=clipspace; the
    annotation names the folder, as in ComfyUI's own /view."""
    reply = http.post("/upload/image", data=form(png((7, 7, 7)), "clipspace-mask-1.png",
                                                  subfolder="clipspace"))
    assert reply.status == 200
    out = server.base_dir / "output"
    out.mkdir(exist_ok=True)
    (out / "made.png").write_bytes(png((8, 8, 8)))
    for params in ({"filename": "clipspace-mask-1.png [input]", "type": "input",
                    "subfolder": "clipspace"},
                   {"filename": "clipspace/clipspace-mask-1.png [input]"},
                   {"filename": "made.png [output]", "type": "input"},
                   {"filename": "made.png [output]"}):
        view = http.get("/view", params=params)
        assert view.status == 200, (params, view.body[:200])
        assert view.headers["Content-Type"] == "image/png"
    assert http.get("/view", params={"filename": "made.png [temp]"}).status == 404
    assert http.get("/view", params={"filename": " [input]"}).status in (403, 404)
    # the annotation changes the folder, never the confinement
    for name in (f"../../{outside.name} [input]", f"{outside} [output]"):
        assert http.get("/view", params={"filename": name}).status in (400, 403)


def test_images_past_the_pixel_limit_are_refused_before_decoding(server: LiveServer,
                                                                 http: Http):
    """A tiny PNG of huge size (all one colour) took 1.3 GB per /view preview: uploads and
    re-encodes share one pixel limit (the mask upload's), and the file itself is still
    served whole."""
    from server.imaging import MAX_IMAGE_PIXELS

    buf = io.BytesIO()
    Image.new("1", (8192, 8193)).save(buf, format="PNG")
    big = buf.getvalue()
    assert len(big) < 1 << 20 and MAX_IMAGE_PIXELS < 8192 * 8193
    reply = http.post("/upload/image", data=form(big, "bomb.png"))
    assert reply.status == 413 and reply.json()["error"]["type"] == "too_large"
    assert "8192x8193" in reply.json()["error"]["message"]
    (server.base_dir / "output").mkdir(exist_ok=True)
    (server.base_dir / "output" / "big.png").write_bytes(big)
    for params in ({"preview": "webp;50"}, {"channel": "rgb"}):
        view = http.get("/view", params={"filename": "big.png", "type": "output", **params})
        assert view.status == 413 and view.json()["error"]["type"] == "too_large"
    assert http.get("/view", params={"filename": "big.png", "type": "output"}).body == big
