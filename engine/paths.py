"""Confining user-supplied paths to their folder.

Every path a user (or a workflow) names is resolved, symlinks included, and must
land inside its root folder; anything else is refused with :class:`PathError`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


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
        drive = len(part) > 1 and part[1] == ":"
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
