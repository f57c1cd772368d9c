"""Special files (FIFOs, sockets) in the user's folders and writes to folders that refuse
them: a FIFO is never offered nor opened (opening one to read waits for a writer for
good: drill faults3, defect 2), and a read-only folder's second error (EROFS on the
cleanup) never hides or chains onto the first (defect 4)."""

from __future__ import annotations

import errno
import os
import socket
import threading
from pathlib import Path

import pytest
from PIL import Image

from engine import PromptValidationError
from engine.environment import Environment, open_regular
from engine.session import Session
from nodes.image import LoadImage
from nodes.masks import LoadImageMask
from tests.graph_nodes import registry_with_capture

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    for role in ("input", "output", "temp", "models/loras"):
        (tmp_path / role).mkdir(parents=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "input" / "real.png")
    os.mkfifo(tmp_path / "input" / "fifo.png")
    os.mkfifo(tmp_path / "models" / "loras" / "fifo.safetensors")
    (tmp_path / "input" / "link.png").symlink_to(tmp_path / "input" / "fifo.png")
    return tmp_path


def bind_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


def test_listings_offer_regular_files_only(home: Path) -> None:
    """As ComfyUI's os.path.isfile filter: a FIFO, a socket, or a link to one is left out."""
    env = Environment.create(home, device="cpu")
    sock = bind_socket(home / "input" / "s.png") if len(str(home)) < 90 else None
    try:
        assert env.list_files("input") == ["real.png"]
        assert env.list_files("models", "loras", suffixes=(".safetensors",)) == []
    finally:
        if sock is not None:
            sock.close()


def test_load_image_refuses_a_fifo_at_validation(home: Path) -> None:
    session = Session(home, device="cpu", registry=registry_with_capture())
    for node in ("LoadImage", "LoadImageMask"):
        prompt = {"l": {"class_type": node, "inputs": {"image": "fifo.png"}},
                  "c": {"class_type": "TestCapture", "inputs": {"value": ["l", 0],
                                                              "key": "fifo"}}}
        with pytest.raises(PromptValidationError) as info:
            session.run(prompt)
        messages = [i.message for i in info.value.issues if i.input_name == "image"]
        assert any("'fifo.png' is a named pipe (FIFO), not a regular file" in m
                   for m in messages), messages
    # an annotated name is no way round it
    assert LoadImage.validate_inputs({"image": "link.png [input]"}, session.env) == [
        ("image", "'link.png [input]' is a named pipe (FIFO), not a regular file: put the "
                  "file itself there, or choose another")]
    assert LoadImage.validate_inputs({"image": "real.png"}, session.env) == []
    os.mkfifo(home / "output" / "fifo.png")  # Load Image (from Outputs) alike
    prompt = {"l": {"class_type": "LoadImageOutput", "inputs": {"image": "fifo.png"}},
              "p": {"class_type": "PreviewImage", "inputs": {"images": ["l", 0]}}}
    with pytest.raises(PromptValidationError, match=r"'fifo.png' is a named pipe \(FIFO\)"):
        session.run(prompt)
    assert LoadImage.fingerprint({"image": "fifo.png"}, session.env) is None


class _Ctx:
    def __init__(self, env: Environment):
        self.env, self.device = env, "cpu"


@pytest.mark.parametrize("node", [LoadImage, LoadImageMask])
def test_a_fifo_swapped_in_after_validation_never_blocks_the_run(home: Path, node) -> None:
    """Run without validation (a file replaced while the prompt waited): refused at once,
    not a worker blocked in open() until someone presses Stop."""
    env = Environment.create(home, device="cpu")
    done: list[BaseException] = []

    def run() -> None:
        try:
            node(image="fifo.png").execute(_Ctx(env))
        except BaseException as exc:  # handed to the test thread
            done.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # free it, so the test fails instead of hanging
        with open(home / "input" / "fifo.png", "wb"):
            pass
        pytest.fail("opening the FIFO blocked")
    assert isinstance(done[0], ValueError) and "not a regular file" in str(done[0])
    assert node(image="real.png").execute(_Ctx(env))[0].shape[-2:] in ((8, 3), (8, 8))


def test_open_regular_refuses_every_special_file(home: Path) -> None:
    with pytest.raises(ValueError, match=r"'x' is a folder, not a regular file"):
        open_regular(home / "input", "x")
    with pytest.raises(ValueError, match=r"named pipe \(FIFO\)"):
        open_regular(home / "input" / "fifo.png", "fifo.png")
    with pytest.raises(FileNotFoundError):
        open_regular(home / "input" / "gone.png", "gone.png")
    if len(str(home)) < 90:
        sock = bind_socket(home / "s")
        try:
            with pytest.raises(ValueError, match="is a socket"):
                open_regular(home / "s", "s")
        finally:
            sock.close()
    with open_regular(home / "input" / "real.png", "real.png") as fh:
        assert fh.read(4) == b"\x89PNG"


def test_save_numbered_on_a_read_only_folder_raises_the_write_error_alone(tmp_path: Path,
                                                                         monkeypatch):
    """The cleanup's unlink raises EROFS even for a missing file: it chained a second
    traceback onto the write's error."""
    from nodes.output_files import save_numbered

    def read_only(self, missing_ok=False):
        raise OSError(errno.EROFS, "Read-only file system")

    def write(tmp: Path) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp))

    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(OSError, match=r"x_NNNNN_\.png could not be saved in .*: Read-only "
                       r"file system") as info:
        save_numbered(tmp_path, "x", ".png", write)
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_a_name_that_is_not_utf8_is_not_offered(tmp_path: Path) -> None:
    """The fuzz drill: ``img\\xff.png`` in input/ was listed as "img\\udcff.png", which no
    request can name back (a 400 when picked, a 404 from /view)."""
    env = Environment.create(tmp_path, device="cpu")
    folder = env.folder("input", create=True)
    Image.new("RGB", (8, 8)).save(folder / "ok.png")
    try:
        with open(os.path.join(os.fsencode(folder), b"img\xff.png"), "wb") as f:
            f.write((folder / "ok.png").read_bytes())
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    assert env.list_files("input") == ["ok.png"]
