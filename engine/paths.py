"""Confining user-supplied paths to their folder.

Every path a user (or a workflow) names is resolved, symlinks included, and must
land inside its root folder; anything else is refused with :class:`PathError`.
"""

from __future__ import annotations

import ntpath
import os
import re
from pathlib import Path


def _process_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` sets it, and other
    threads may create files meanwhile); 0o022 where /proc does not say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


#: the mode of the files Steerflow writes: what a plain ``open`` gives. mkstemp's temp
#: files and safetensors' ``save_file`` make 0600 files, which another user or service
#: sharing the models or output folder could not read.
FILE_MODE = 0o666 & ~_process_umask()


def give_plain_mode(path: str | os.PathLike[str]) -> None:
    """:data:`FILE_MODE` for a file we wrote, or for every file under a folder we built."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        for folder, _, files in os.walk(path):
            for name in files:
                target = Path(folder, name)
                if not target.is_symlink():
                    os.chmod(target, FILE_MODE)
    elif path.is_file() and not path.is_symlink():
        os.chmod(path, FILE_MODE)


class PathError(ValueError):
    """A user-supplied path escapes its folder or is malformed."""


def confined_path(root: str | os.PathLike[str], *parts: str) -> Path:
    """Join ``parts`` under ``root`` and return the resolved path.

    Raises :class:`PathError` when the result (after resolving ``..`` and
    symlinks) is not inside ``root``, when a part is absolute, or when it
    contains a NUL byte.
    """
    base = Path(root).resolve()
    rel = Path()
    for part in parts:
        if part is None or part == "":
            continue
        if not isinstance(part, str):
            raise PathError(f"path part must be a string, got {type(part).__name__}")
        if "\x00" in part:
            raise PathError("path contains a NUL byte")
        # "C:x" is drive-relative on Windows only; elsewhere "4:3 crop.png" is a name
        drive = os.name == "nt" and bool(ntpath.splitdrive(part)[0])
        if os.path.isabs(part) or part.startswith(("\\", "/")) or drive:
            raise PathError(f"absolute paths are not allowed: {part!r}")
        rel = rel / part
    try:
        candidate = (base / rel).resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError on 3.11)
        raise PathError(f"path {str(rel)!r} cannot be resolved: {exc}") from None
    if candidate != base and base not in candidate.parents:
        raise PathError(f"path {str(rel)!r} escapes its folder")
    return candidate


ANNOTATED_NAME = re.compile(r"^(?P<name>.*?)\s*\[(?P<role>input|output|temp)\]\s*$")


def split_annotated(name: str) -> tuple[str, str]:
    """ComfyUI's annotated file names (``folder_paths.get_annotated_filepath``):
    ``"x.png [output]"``, ``"sub/x.png [temp]"``, ``"x.png [input]"``; no annotation
    means input. Returns ``(role, relative name)``."""
    match = ANNOTATED_NAME.match(name)
    if match is None:
        return "input", name.strip()
    return match["role"], match["name"].strip()


def writable_folder(folder: Path) -> None:
    """Create ``folder`` if needed; an OSError naming it when it cannot take files (checked
    before a run, not at its first save)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create the output folder {folder}: {exc.strerror or exc}"
                      ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OSError(f"cannot write into the output folder {folder}")


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in ``text`` (JSON's "\\ud800", or the escape
    ``os.fsdecode`` gives a file name's bytes that are not UTF-8), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None
