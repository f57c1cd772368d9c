"""The shipped examples' files are copied into a new base folder, atomically, and a folder
that cannot take them is a warning, never a worker that cannot start."""

from __future__ import annotations

import shutil

import nodes
from engine import Environment


def test_example_files_are_copied_whole_or_not_at_all(tmp_path, monkeypatch, caplog):
    env = Environment.create(tmp_path, device="cpu")
    real_copy = shutil.copyfile
    calls: list[str] = []

    def full_disk(src, dst, *args, **kwargs):  # writes half the file, then ENOSPC
        calls.append(str(dst))
        with open(dst, "wb") as fh:
            fh.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    nodes.seed_example_inputs(env)  # no exception
    inputs = env.folder("input", create=True)
    assert calls and list(inputs.iterdir()) == []  # no truncated file under a real name
    assert "cannot copy the example file" in caplog.text
    monkeypatch.setattr(shutil, "copyfile", real_copy)
    nodes.seed_example_inputs(env)  # space is back: the files arrive whole
    for path in inputs.iterdir():
        src = nodes.EXAMPLE_ASSETS / nodes.COMFY_EXAMPLE_INPUTS.get(path.name, path.name)
        assert path.read_bytes() == src.read_bytes()
    assert (inputs / "example.png").is_file()  # what ComfyUI's image-to-image templates load
    assert not [p for p in inputs.iterdir() if p.name.startswith(".")]

