"""Files Steerflow writes get a plain file's mode (0644 under the usual umask):
safetensors' writer and mkstemp make 0600 files, which another user or service sharing
the models or output folder could not read."""

from __future__ import annotations

import stat
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.paths import FILE_MODE, give_plain_mode
from nodes.output_files import save_numbered


def modes(root: Path) -> set[int]:
    return {stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


def test_safetensors_files_get_a_plain_mode(tmp_path):
    folder = tmp_path / "model" / "unet"
    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(folder / "w.safetensors"))
    assert modes(tmp_path) == {0o600}  # the library's own mode: why this exists
    give_plain_mode(tmp_path / "model")
    assert modes(tmp_path) == {FILE_MODE}


def test_saved_outputs_and_built_in_models_are_readable_by_others(tmp_path):
    from nodes.diffusion.tiny import ensure_default_model

    path, _ = save_numbered(tmp_path, "x", ".safetensors",
                            lambda tmp: save_file({"w": torch.zeros(1)}, str(tmp)))
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE
    ensure_default_model(tmp_path / "models")
    assert modes(tmp_path / "models") == {FILE_MODE}


def test_a_full_disk_names_the_file_and_its_folder_not_the_temporary_file(tmp_path):
    """The fault drill: Save Image on a full disk said only "[Errno 28] No space left on
    device", Save LoRA the absolute path of a hidden temporary file."""
    import errno

    import pytest

    folder = tmp_path / "cats"
    folder.mkdir()

    def full(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    with pytest.raises(OSError) as caught:
        save_numbered(folder, "cat", ".png", full)
    message = str(caught.value)
    assert message == "cat_NNNNN_.png could not be saved in cats/: no space left on the disk"
    assert list(folder.iterdir()) == []  # nothing half-written is left
