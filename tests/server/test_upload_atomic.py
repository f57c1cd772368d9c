"""Uploads are atomic: a crash never leaves a partial image, and leftovers are cleaned up."""

from __future__ import annotations

import errno
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.environment import Environment
from nodes.image import list_input_images
from server import files
from server.files import RESUMABLE_KEEP_SECONDS, TEMP_PREFIX, remove_leftovers
from tests.server.helpers import REPO, Http, LiveServer, SubprocessServer


def png(color: tuple[int, int, int] = (1, 2, 3)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def big_png(side: int = 1200) -> bytes:
    """A real, incompressible PNG of about ``3 * side**2`` bytes."""
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


def temp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(f"{TEMP_PREFIX}*"))


def multipart(data: bytes, filename: str, **fields: str) -> tuple[bytes, str]:
    boundary = "steerflowCrashTest"
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
             .encode() for k, v in fields.items()]
    parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                 f"filename=\"{filename}\"\r\nContent-Type: image/png\r\n\r\n".encode()
                 + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# --- kill -9 in the middle of an upload, for real ------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("overwrite", [False, True])
def test_kill_9_mid_upload_leaves_no_partial_image(tmp_path: Path, loop, overwrite: bool):
    env = Environment.create(tmp_path, device="cpu")
    inputs = env.folder("input", create=True)
    if overwrite:
        (inputs / "crash.png").write_bytes(png((7, 7, 7)))  # must survive untouched
    before = list_input_images(env)
    data = big_png()
    body, ctype = multipart(data, "crash.png", type="input",
                            overwrite="true" if overwrite else "false")
    server = SubprocessServer(tmp_path)
    try:
        server.wait_ready()
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(f"POST /upload/image HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                     f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        sent, chunk = 0, 64 << 10
        while sent < len(body) * 3 // 4:  # slowly, and never the whole body
            sock.sendall(body[sent:sent + chunk])
            sent += chunk
            time.sleep(0.002)
        time.sleep(0.3)  # let the server take in what was sent
        assert server.proc.poll() is None, "the server died before the kill"
        server.kill()
        sock.close()
    finally:
        server.stop()
    # Whatever the server had reached, no file of the final name is half-written...
    if overwrite:
        assert (inputs / "crash.png").read_bytes() == png((7, 7, 7))
    else:
        assert not (inputs / "crash.png").exists()
    # ...and nothing partial is offered by LoadImage's choices.
    assert list_input_images(env) == before
    remove_leftovers(env)
    assert temp_files(tmp_path) == []
    # The restarted server takes the same upload, under the same name.
    again = SubprocessServer(tmp_path, server.port)
    try:
        again.wait_ready()
        http = Http(again.url, loop)
        reply = http.post("/upload/image", data=body, headers={"Content-Type": ctype})
        http.close()
        assert reply.status == 200, reply.body
        assert reply.json()["name"] == "crash.png"
        assert (inputs / "crash.png").read_bytes() == data
        assert temp_files(tmp_path) == []
    finally:
        output = again.stop()
    assert "Traceback" not in output, output


# --- a crash between the write and the rename --------------------------------------
_CRASH = """
import os, sys
from pathlib import Path
from server import files
def crash(*args, **kwargs):
    os._exit(9)  # the process dies here: no finally, no clean-up
os.link = os.replace = crash
folder, overwrite = Path(sys.argv[1]), sys.argv[2] == "1"
files._store(folder, "pic.png", Path(sys.argv[3]).read_bytes(), overwrite)
"""


@pytest.mark.parametrize("overwrite", [False, True])
def test_crash_between_write_and_rename_leaves_only_a_temp_file(tmp_path: Path,
                                                                 overwrite: bool):
    env = Environment.create(tmp_path, device="cpu")
    inputs = env.folder("input", create=True)
    if overwrite:
        (inputs / "pic.png").write_bytes(png((7, 7, 7)))
    data = png((200, 100, 50))
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    before = list_input_images(env)
    proc = subprocess.run([sys.executable, "-c", _CRASH, str(inputs), str(int(overwrite)),
                           str(source)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 9, proc.stderr
    [leftover] = temp_files(tmp_path)
    assert leftover.parent == inputs and leftover.read_bytes() == data  # complete, fsynced
    assert list_input_images(env) == before  # never offered as an image
    if overwrite:
        assert (inputs / "pic.png").read_bytes() == png((7, 7, 7))
    else:
        assert not (inputs / "pic.png").exists()
    assert remove_leftovers(env) == [leftover]
    assert temp_files(tmp_path) == []


# --- the store keeps its naming rules, and never leaves a temp file ---------------------
@pytest.mark.parametrize("hard_links", [True, False])
def test_store_names_and_reuse(tmp_path: Path, monkeypatch, hard_links: bool):
    if not hard_links:  # e.g. FAT or a network share: falls back to check-and-rename
        def no_link(src: object, dst: object) -> None:
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(files.os, "link", no_link)
    a, b, c = png((1, 1, 1)), png((2, 2, 2)), png((3, 3, 3))
    assert files._store(tmp_path, "a.png", a, False) == "a.png"
    assert files._store(tmp_path, "a.png", a, False) == "a.png"  # identical: reused
    assert files._store(tmp_path, "a.png", b, False) == "a (1).png"
    assert files._store(tmp_path, "a.png", b, False) == "a (1).png"
    assert files._store(tmp_path, "a.png", c, False) == "a (2).png"
    assert files._store(tmp_path, "a.png", c, True) == "a.png"  # overwrite
    assert (tmp_path / "a.png").read_bytes() == c
    assert (tmp_path / "a (1).png").read_bytes() == b
    (tmp_path / "d.png").mkdir()  # a folder of that name is skipped, not clobbered
    assert files._store(tmp_path, "d.png", a, False) == "d (1).png"
    assert temp_files(tmp_path) == []


def test_full_disk_is_a_clean_error(server: LiveServer, http: Http, monkeypatch):
    def full(folder: Path, data: bytes) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_write_temp", full)
    form_body, ctype = multipart(png(), "x.png")
    reply = http.post("/upload/image", data=form_body, headers={"Content-Type": ctype})
    assert reply.status == 507
    assert reply.json()["error"]["type"] == "write_failed"
    assert http.get("/system_stats").status == 200  # still serving


# --- remove_leftovers -------------------------------------------------------------
def test_remove_leftovers(tmp_path: Path):
    base = tmp_path / "base"
    env = Environment.create(base, device="cpu")
    inputs, outputs, temp = (env.folder(r, create=True) for r in ("input", "output", "temp"))
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "dir" / f"{TEMP_PREFIX}theirs.part").write_text("not ours")
    (outside / "dir" / "keep.png").write_text("keep")
    (outside / "file.png").write_text("keep")
    (inputs / "sub").mkdir()
    stale = [inputs / f"{TEMP_PREFIX}a1.part", inputs / "sub" / f"{TEMP_PREFIX}b2",
             outputs / f"{TEMP_PREFIX}c3.part"]
    for path in stale:
        path.write_bytes(b"partial")
    kept = [inputs / "photo.png", inputs / ".hidden", inputs / "sub" / "x.upload-y.png",
            outputs / "img_00001_.png"]
    for path in kept:
        path.write_bytes(b"ok")
    (inputs / "linked").symlink_to(outside / "dir")  # walked past, never into
    (inputs / f"{TEMP_PREFIX}link.part").symlink_to(outside / "file.png")  # not a file
    (temp / "preview.png").write_bytes(b"t")
    (temp / "nested" / "deep").mkdir(parents=True)
    (temp / "nested" / "deep" / "x.png").write_bytes(b"t")
    (temp / "nested" / "out").symlink_to(outside / "dir")
    (temp / "dirlink").symlink_to(outside / "dir")
    (temp / "filelink").symlink_to(outside / "file.png")

    removed = remove_leftovers(env)

    assert set(stale) <= set(removed)
    assert all(not p.exists() for p in stale)
    assert all(p.read_bytes() == b"ok" for p in kept)
    assert (inputs / f"{TEMP_PREFIX}link.part").is_symlink()
    assert temp.is_dir() and list(temp.iterdir()) == []
    # nothing outside the folders was touched through a symlink
    assert sorted(p.name for p in (outside / "dir").iterdir()) == [
        f"{TEMP_PREFIX}theirs.part", "keep.png"]
    assert (outside / "file.png").read_text() == "keep"
    assert remove_leftovers(env) == []  # idempotent


def test_remove_leftovers_spares_a_symlinked_temp_and_recent_files(tmp_path: Path):
    base = tmp_path / "base"
    env = Environment.create(base, device="cpu")
    inputs = env.folder("input", create=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "important.txt").write_text("keep")
    env.folders["temp"].symlink_to(elsewhere, target_is_directory=True)
    fresh = inputs / f"{TEMP_PREFIX}now.part"
    fresh.write_bytes(b"in progress")
    assert remove_leftovers(env, older_than=3600) == []
    assert fresh.exists() and (elsewhere / "important.txt").exists()
    old = time.time() - 7200
    os.utime(fresh, (old, old))
    assert remove_leftovers(env, older_than=3600) == [fresh]
    assert (elsewhere / "important.txt").exists()


def test_missing_folders_are_fine(tmp_path: Path):
    env = Environment.create(tmp_path / "nothing-here", device="cpu")
    assert remove_leftovers(env) == []


def test_saves_a_killed_worker_left_are_removed_at_start(tmp_path: Path):
    """Save Image and the training nodes write ``.<name>.<token or pid>.tmp`` and rename
    it: a worker killed midway left them in output/ and models/ for good. At start they
    go when their writer is gone (a dead pid) or, token-named, when an hour old; a live
    writer's, a fresh one and other hidden files stay."""
    env = Environment.create(tmp_path / "base", models_dir=tmp_path / "models", device="cpu")
    out = env.folder("output", create=True) / "ks"
    out.mkdir()
    loras = env.folder("models", create=True) / "loras"
    loras.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    old = time.time() - 2 * files.WRITE_TEMP_AGE
    paths = {
        "old_token": out / ".bomb.01caf867.tmp",
        "fresh_token": out / ".bomb.3c4454db.tmp",
        "dead_pid": loras / f".sks.safetensors.{dead}.tmp",
        "live_pid": loras / f".mine.safetensors.{os.getpid()}.tmp",
        "other_hidden": out / ".keep.tmp",
        "image": out / "bomb_00001_.png",
    }
    for path in paths.values():
        path.write_bytes(b"x")
    os.utime(paths["old_token"], (old, old))
    removed = set(remove_leftovers(env))
    assert removed == {paths["old_token"], paths["dead_pid"]}
    assert all(p.exists() for k, p in paths.items() if p not in removed)


def test_save_image_temp_files_carry_the_writer_pid_and_go_when_it_is_replaced(
        tmp_path: Path):
    """The fault drill: Save Image's temp name carried only a random token, so a worker
    killed mid-save left ``output/.bigsave.71b7c02e.tmp`` (1.1 MB) for an hour, across
    restarts. It now carries the writer's pid: the pool removes what a dead worker
    left when it replaces it (remove_writes_of), and the start-up clean-up at once."""
    from nodes.output_files import save_numbered, write_temp_name

    name = write_temp_name("bigsave")
    match = files._WRITE_TEMP.match(name)
    assert match and files._writer_pid(match) == os.getpid(), name
    long = write_temp_name("é" * 200)  # cut to fit a file name, never mid-character
    assert len(long.encode()) <= 255 and files._WRITE_TEMP.match(long), long
    seen: list[str] = []
    path, _ = save_numbered(tmp_path, "bigsave", ".png",
                            lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"x")))
    assert path.name == "bigsave_00001_.png" and seen[0].startswith(f".bigsave.{os.getpid()}.")
    assert [p.name for p in tmp_path.iterdir()] == ["bigsave_00001_.png"]

    env = Environment.create(tmp_path / "base", models_dir=tmp_path / "models", device="cpu")
    out = env.folder("output", "sub", create=True)
    loras = env.folder("models", "loras", create=True)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    its = [out / f".bigsave.{dead}.71b7c02e.tmp", loras / f".sks.safetensors.{dead}.tmp"]
    kept = [out / f".bigsave.{os.getpid()}.71b7c02e.tmp", out / ".bigsave.71b7c02e.tmp",
            out / f"bigsave.{dead}.71b7c02e.tmp", out / f".bigsave.{dead}1.71b7c02e.tmp"]
    for path in its + kept:
        path.write_bytes(b"half")
    assert sorted(files.remove_writes_of(env, dead)) == sorted(its)
    assert all(p.exists() for p in kept)
    kept.pop().unlink()  # another pid: no telling whether it lives
    for path in its:
        path.write_bytes(b"half")
    # at start: a dead writer's go whatever their age; a live one's and a fresh token stay
    assert set(remove_leftovers(env)) == set(its)
    assert all(p.exists() for p in kept)


def test_start_up_clean_up_keeps_the_checkpoints_trainings_resume_from(tmp_path: Path):
    """temp/ is emptied at start, but a stopped training (or one whose server was
    killed) must resume from temp/training, not start again from step 0."""
    env = Environment.create(tmp_path, device="cpu")
    temp = env.folder("temp", create=True)
    (temp / "training").mkdir()
    kept = temp / "training" / "lora-abc.pt"
    kept.write_bytes(b"state")
    stray = temp / "training" / ".lora-abc.pt.999999999.tmp"  # its writer is gone
    stray.write_bytes(b"half")
    (temp / "preview.png").write_bytes(b"x")
    (temp / "sub").mkdir()
    abandoned = temp / "training" / "dreambooth-old.pt"  # no run touched it for weeks
    abandoned.write_bytes(b"gigabytes")
    weeks = time.time() - RESUMABLE_KEEP_SECONDS - 60
    os.utime(abandoned, (weeks, weeks))
    removed = remove_leftovers(env)
    assert kept.is_file()
    assert sorted(removed) == sorted([stray, abandoned, temp / "preview.png", temp / "sub"])


def test_start_up_keeps_the_previews_the_history_shows(tmp_path: Path):
    """The ComfyUI drill: after a restart every Preview Image the history named was a 404
    (start-up empties temp/; ComfyUI's history goes with it, ours stays)."""
    from server.storage import Storage

    env = Environment.create(tmp_path / "base", device="cpu")
    temp = env.folder("temp", create=True)
    storage = Storage(tmp_path / "db.sqlite")
    image = {"filename": "preview_00001_.png", "subfolder": "", "type": "temp"}
    nested = {"filename": "b.png", "subfolder": "run/x", "type": "temp"}
    saved = {"filename": "keep_00001_.png", "subfolder": "", "type": "output"}
    storage.finish("p1", 1, {"outputs": {"9": {"images": [image, saved]},
                                         "10": {"images": [nested], "text": ["hi"]}},
                             "status": {"status_str": "success"}})
    storage.finish("p2", 2, {"outputs": "odd", "status": {}})  # a malformed entry is passed
    assert storage.temp_outputs() == {"preview_00001_.png", "run/x/b.png"}
    for name in ("preview_00001_.png", "other.png", "run/x/b.png", "run/x/c.png", "run/y.png"):
        (temp / name).parent.mkdir(parents=True, exist_ok=True)
        (temp / name).write_bytes(b"t")
    remove_leftovers(env, keep_temp=storage.temp_outputs())
    left = sorted(p.relative_to(temp).as_posix() for p in temp.rglob("*") if p.is_file())
    assert left == ["preview_00001_.png", "run/x/b.png"]
