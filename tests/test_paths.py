"""User paths: confined to their folder after resolving symlinks; names are names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.paths import PathError, confined_path


@pytest.mark.parametrize("name", ["1:1 crop.png", "4:3/pic.png", "a:b", "x: y.json",
                                  "C:x.png", "c:"])
def test_a_colon_in_a_name_is_no_drive_letter_off_windows(tmp_path: Path, name: str):
    """'1:1 crop.png' was refused as an absolute Windows path, after the server had listed
    it: only Windows has drive-relative names."""
    if os.name == "nt":
        pytest.skip("drive letters are paths on Windows")
    assert confined_path(tmp_path, name) == tmp_path.resolve() / name


@pytest.mark.parametrize("parts", [("/etc/passwd",), ("\\\\server\\share",), ("a", "/b"),
                                   ("..",), ("a/../../b",), ("x\x00",)])
def test_absolute_escaping_and_nul_paths_are_refused(tmp_path: Path, parts: tuple[str, ...]):
    with pytest.raises(PathError):
        confined_path(tmp_path, *parts)


def test_a_symlink_out_of_the_folder_is_refused_and_one_inside_is_followed(tmp_path: Path):
    root, outside = tmp_path / "input", tmp_path / "secret"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (root / "out").symlink_to(outside, target_is_directory=True)
    (root / "in").symlink_to(root / "real", target_is_directory=True)
    with pytest.raises(PathError, match="escapes its folder"):
        confined_path(root, "out", "x.png")
    assert confined_path(root, "in", "x.png") == (root / "real" / "x.png").resolve()


def test_lists_offer_a_linked_folder_inside_and_say_why_one_outside_is_not(tmp_path, caplog):
    """A folder link that stays inside its folder was usable by upload, /view and save but
    missing from the lists, so the name the server returned was refused; a link out is
    left out with one log line (not in silence), and a link back up is walked once."""
    import logging

    from engine import Environment

    env = Environment.create(tmp_path / "base", device="cpu")
    root = env.folder("input")
    (root / "real").mkdir(parents=True)
    (root / "real" / "a.png").write_bytes(b"x")
    (root / "linked").symlink_to(root / "real", target_is_directory=True)
    (root / "real" / "up").symlink_to(root, target_is_directory=True)  # a loop
    outside = tmp_path / "shared"
    outside.mkdir()
    (outside / "big.png").write_bytes(b"x")
    (root / "out").symlink_to(outside, target_is_directory=True)
    (root / "out.png").symlink_to(outside / "big.png")
    with caplog.at_level(logging.WARNING, logger="engine.environment"):
        names = env.list_files("input", suffixes=(".png",))
        env.list_files("input", suffixes=(".png",))
    assert sorted(names) == ["linked/a.png", "real/a.png"]
    notes = [r.getMessage() for r in caplog.records if "symlink out of" in r.getMessage()]
    assert len(notes) == 2  # once per link, not per listing


def test_a_model_folder_linked_out_says_why_it_lists_nothing(tmp_path, caplog):
    """The files drill: models/vae a symlink to another disk listed nothing, and no log
    said why (a file linked out does say so)."""
    import logging

    from engine import Environment

    env = Environment.create(tmp_path / "base", device="cpu")
    elsewhere = tmp_path / "disk" / "vae"
    elsewhere.mkdir(parents=True)
    (elsewhere / "v.safetensors").write_bytes(b"x")
    env.folder("models", create=True)
    (env.folder("models") / "vae").symlink_to(elsewhere, target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="engine.environment"):
        assert env.list_files("models", "vae") == []
    assert any("vae is a symlink out of" in r.getMessage() for r in caplog.records)


def test_links_between_sibling_folders_end(tmp_path):
    """x/to_y -> y and y/to_x -> x: each walk stops when it comes back to a folder on its way."""
    from engine import Environment

    env = Environment.create(tmp_path / "base", device="cpu")
    root = env.folder("input")
    for a in ("x", "y"):
        (root / a).mkdir(parents=True, exist_ok=True)
        (root / a / f"{a}.png").write_bytes(b"x")
    (root / "x" / "to_y").symlink_to(root / "y", target_is_directory=True)
    (root / "y" / "to_x").symlink_to(root / "x", target_is_directory=True)
    assert env.list_files("input", suffixes=(".png",)) == [
        "x/to_y/y.png", "x/x.png", "y/to_x/x.png", "y/y.png"]
