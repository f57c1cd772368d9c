"""Decoding images in the server (fuzz4 drill): /view previews and /upload/mask share one
bounded decode pool apart from uploads, previews are small, decompression bombs are 413,
files cut short load everywhere as ComfyUI loads them, errors show no object reprs."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image, ImageFile

import server.comfy_frontend
import server.files
from server.imaging import DECODE_SLOTS, LIGHT_PIXELS, PREVIEW_SIDE
from tests.server.helpers import Http, LiveServer


def png(size: tuple[int, int] = (4, 4), mode: str = "RGB", color: Any = 0) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def bomb_header(width: int, height: int) -> bytes:
    """A 70-byte PNG whose header claims ``width`` x ``height`` (past Pillow's own limit)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                              8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


def truncated_jpeg() -> bytes:
    """The first half of a 64x64 JPEG: Pillow's verify passes it, a plain load fails."""
    import numpy as np

    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, format="JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def upload(http: Http, data: bytes, name: str) -> Any:
    form = aiohttp.FormData()
    form.add_field("image", data, filename=name, content_type="application/octet-stream")
    return http.post("/upload/image", data=form)


def mask_form(mask: bytes, ref: dict[str, str]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("image", mask, filename="clipspace-mask-1.png", content_type="image/png")
    form.add_field("original_ref", json.dumps(ref))
    return form


@pytest.fixture
def folders(server: LiveServer) -> tuple[Path, Path]:
    inputs, outputs = server.base_dir / "input", server.base_dir / "output"
    inputs.mkdir(parents=True, exist_ok=True)
    outputs.mkdir(parents=True, exist_ok=True)
    return inputs, outputs


# --- D3: previews never starve uploads; they are small ---------------------------------
def test_big_previews_queue_apart_from_uploads_and_small_previews(
        http: Http, folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """6 previews of one 8192² PNG held every default-executor thread (a 153-byte upload
    took 40 s, a 64x64 preview 50 s). Big re-encodes now wait in their own pool of
    DECODE_SLOTS threads: with that pool full and many more queued, an upload and a
    small image's preview still answer."""
    _, outputs = folders
    big = (2048, LIGHT_PIXELS // 2048 + 1)  # just past "light"; a 1-bit PNG is tiny
    (outputs / "big.png").write_bytes(png(big, "1"))
    (outputs / "small.png").write_bytes(png((8, 8)))
    real = server.files.reencode
    release, lock = threading.Event(), threading.Lock()
    inside: list[str] = []
    most, done = [0], [0]

    def held(path: str, *args: Any) -> tuple[bytes, str]:
        if not path.endswith("big.png"):
            return real(path, *args)
        with lock:
            inside.append(threading.current_thread().name)
            most[0] = max(most[0], len(inside) - done[0])
        release.wait(60)
        with lock:
            done[0] += 1
        return b"RIFF....WEBP", "image/webp"

    monkeypatch.setattr(server.files, "reencode", held)
    many = 40  # more than any default executor's threads (min(32, cores + 4))

    async def big_preview() -> int:
        async with http.session.get(http.base + "/view", params={
                "filename": "big.png", "preview": "webp;90"}) as resp:
            return resp.status

    tasks = [asyncio.run_coroutine_threadsafe(big_preview(), http.loop.loop)
             for _ in range(many)]
    try:
        for _ in range(1200):  # until the pool is full (a bound, not a timing)
            with lock:
                if len(inside) >= DECODE_SLOTS:
                    break
            assert not any(t.done() for t in tasks)
            release.wait(0.05)
        else:
            pytest.fail("the big previews never started")
        assert upload(http, png((3, 3)), "tiny.png").status == 200
        small = http.get("/view", params={"filename": "small.png", "preview": "webp;90"})
        assert small.status == 200 and small.headers["Content-Type"] == "image/webp"
        with lock:
            assert len(inside) == DECODE_SLOTS  # the rest are queued, holding no thread
    finally:
        release.set()
    assert [t.result(60) for t in tasks] == [200] * many
    assert most[0] <= DECODE_SLOTS
    assert all(name.startswith("steerflow-decode") for name in inside)


def test_previews_are_at_most_preview_side_and_channels_full_size(
        http: Http, folders: tuple[Path, Path]) -> None:
    """ComfyUI's front end asks ``preview=`` for "a lightweight image": a preview is cut
    to PREVIEW_SIDE on its longer side (aspect kept); the mask editor's ``channel``
    views and the plain file stay full size."""
    _, outputs = folders
    wide = (PREVIEW_SIDE * 2 + 4, 6)
    (outputs / "wide.png").write_bytes(png(wide, "RGBA", (10, 20, 30, 40)))
    buf = io.BytesIO()
    Image.new("RGB", (PREVIEW_SIDE + 100, 8), (200, 0, 0)).save(buf, format="JPEG")
    (outputs / "wide.jpg").write_bytes(buf.getvalue())
    for name, fmt in (("wide.png", "webp;50"), ("wide.png", "png"), ("wide.jpg", "jpeg")):
        reply = http.get("/view", params={"filename": name, "preview": fmt})
        assert reply.status == 200, reply.body[:200]
        with Image.open(io.BytesIO(reply.body)) as shown:
            assert max(shown.size) == PREVIEW_SIDE, (name, shown.size)
    for channel in ("rgb", "a"):
        reply = http.get("/view", params={"filename": "wide.png", "channel": channel})
        with Image.open(io.BytesIO(reply.body)) as shown:
            assert shown.size == wide


# --- D2: /upload/mask decodes in the same bounded pool ---------------------------------
def test_upload_mask_decodes_in_the_bounded_pool(http: Http, folders: tuple[Path, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Six parallel mask uploads of 8192² images took 6.6 GB of server memory: they ran
    on the default executor with no bound. A big one now runs in /view's decode pool; a
    small one (the common case) at once."""
    inputs, _ = folders
    big = (2048, LIGHT_PIXELS // 2048 + 1)
    (inputs / "big.png").write_bytes(png(big))
    (inputs / "small.png").write_bytes(png((8, 8)))
    real, threads = server.comfy_frontend.apply_mask, []

    def recorded(*args: Any) -> bytes:
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(server.comfy_frontend, "apply_mask", recorded)
    for name, size in (("big.png", (4, 4)), ("small.png", (8, 8))):
        reply = http.post("/upload/mask", data=mask_form(
            png(size, "RGBA"), {"filename": name, "type": "input"}))
        assert reply.status == 200, reply.body
    assert threads[0].startswith("steerflow-decode")
    assert not threads[1].startswith("steerflow-decode")


# --- D6: decompression bombs are the server's own 413 ----------------------------------
def test_a_bomb_header_is_413_too_large_everywhere(http: Http,
                                                  folders: tuple[Path, Path]) -> None:
    """A 70-byte PNG claiming 60000x60000 got 415 with Pillow's "could be decompression
    bomb DOS attack"; a 9000x9000 one got the server's 413. Both are 413 now."""
    inputs, outputs = folders
    bomb = bomb_header(60000, 60000)

    def too_large(reply: Any) -> str:
        assert reply.status == 413, reply.body[:300]
        error = reply.json()["error"]
        assert error["type"] == "too_large" and "8192x8192" in error["message"]
        assert "DOS" not in error["message"]
        return str(error["message"])

    assert "3600000000 pixels" in too_large(upload(http, bomb, "bomb.png"))
    (inputs / "photo.png").write_bytes(png((4, 4)))
    message = too_large(http.post("/upload/mask", data=mask_form(
        bomb, {"filename": "photo.png", "type": "input"})))
    assert message.startswith("the mask: ")
    (outputs / "bomb.png").write_bytes(bomb)
    too_large(http.get("/view", params={"filename": "bomb.png", "preview": "webp"}))


# --- D7: no object reprs or server paths in errors -------------------------------------
def test_unreadable_images_are_described_without_reprs_or_paths(
        http: Http, server: LiveServer, folders: tuple[Path, Path]) -> None:
    """A mask that was no image gave "cannot identify image file <_io.BytesIO object at
    0x7f...>"; /view of an undecodable file named the server's path."""
    inputs, outputs = folders
    (inputs / "photo.png").write_bytes(png((4, 4)))
    reply = http.post("/upload/mask", data=mask_form(
        b"garbage, not an image", {"filename": "photo.png", "type": "input"}))
    assert reply.status == 415 and reply.json()["error"]["type"] == "not_an_image"
    message = reply.json()["error"]["message"]
    assert "the mask: " in message and "0x" not in message and "BytesIO" not in message
    (outputs / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    reply = http.get("/view", params={"filename": "bad.png", "preview": "webp"})
    assert reply.status == 422
    message = reply.json()["error"]["message"]
    assert str(server.base_dir) not in message and "0x" not in message


# --- D5: a JPEG cut short loads everywhere, as in ComfyUI ------------------------------
def test_a_truncated_jpeg_is_read_alike_by_upload_view_and_mask(
        http: Http, folders: tuple[Path, Path]) -> None:
    """/upload/image accepted a JPEG cut in half (verify does not decode JPEG) that /view
    (422) and /upload/mask (415) then refused. ComfyUI loads such files (its
    node_helpers.pillow retries with LOAD_TRUNCATED_IMAGES); so does every path here,
    and the flag is never left on. A PNG cut short is still refused at upload."""
    inputs, _ = folders
    cut = truncated_jpeg()
    reply = upload(http, cut, "cut.jpg")
    assert reply.status == 200, reply.body
    name = reply.json()["name"]
    for params in ({"preview": "png"}, {"channel": "rgb"}, {"channel": "a"}):
        view = http.get("/view", params={"filename": name, "type": "input", **params})
        assert view.status == 200, (params, view.body[:200])
        with Image.open(io.BytesIO(view.body)) as shown:
            assert shown.size == (64, 64)
    reply = http.post("/upload/mask", data=mask_form(
        png((64, 64), "RGBA"), {"filename": name, "type": "input"}))
    assert reply.status == 200, reply.body
    (inputs / "photo.png").write_bytes(png((64, 64)))
    reply = http.post("/upload/mask", data=mask_form(cut, {"filename": "photo.png",
                                                           "type": "input"}))
    assert reply.status == 200, reply.body  # the cut JPEG as the mask (no alpha: opaque)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    whole = png((64, 64))
    reply = upload(http, whole[: len(whole) // 2], "cut.png")
    assert reply.status == 415 and reply.json()["error"]["type"] == "not_an_image"


def _run_loader(tmp_path: Path, node: str, output: str, port: str) -> Any:
    from engine import NodeRegistry
    from engine.session import Session
    from nodes.image import LoadImage, MaskPreview, PreviewImage
    from nodes.masks import LoadImageMask

    reg = NodeRegistry()
    for cls in (LoadImage, LoadImageMask, PreviewImage, MaskPreview):
        reg.register(cls)
    session = Session(tmp_path, device="cpu", registry=reg)
    (session.env.folder("input", create=True) / "cut.jpg").write_bytes(truncated_jpeg())
    return session.run({"1": {"class_type": node, "inputs": {"image": "cut.jpg"}},
                        "2": {"class_type": output, "inputs": {port: ["1", 0]}}})


def test_load_image_reads_a_truncated_jpeg(tmp_path: Path) -> None:
    """Load Image failed with "image file is truncated" on a file the upload took."""
    result = _run_loader(tmp_path, "LoadImage", "PreviewImage", "images")
    assert result.ok, result.run.error
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_load_image_mask_reads_a_truncated_jpeg(tmp_path: Path) -> None:
    result = _run_loader(tmp_path, "LoadImageMask", "MaskPreview", "mask")
    assert result.ok, result.run.error
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
