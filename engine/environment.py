"""Where a run happens: folders, compute device and user opt-ins."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from engine.paths import confined_path, lone_surrogate

log = logging.getLogger(__name__)

DEFAULT_FOLDERS = ("models", "input", "output", "temp")
#: the subfolder of temp/ where interrupted runs keep the state they resume from
#: (training checkpoints): the server's start-up clean-up of temp/ leaves it
RESUMABLE_DIR = "training"


def default_device() -> str:
    """cuda when present, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Environment:
    """Folders and settings shared by every node of a run.

    ``folders`` maps a role ("models", "input", "output", "temp") to a directory;
    every name a workflow supplies is confined to its folder with
    :func:`engine.paths.confined_path`.
    """

    folders: dict[str, Path] = field(default_factory=dict)
    device: str = "cpu"
    allow_pickle: bool = False
    options: dict[str, object] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        base_dir: str | os.PathLike[str] = ".",
        *,
        models_dir: str | os.PathLike[str] | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        device: str | None = None,
        allow_pickle: bool = False,
    ) -> Environment:
        base = Path(base_dir).resolve()
        folders = {name: base / name for name in DEFAULT_FOLDERS}
        # "" is no folder (as ComfyUI's flags): an empty $OUT must not mean the cwd
        if models_dir is not None and str(models_dir):
            folders["models"] = Path(models_dir).resolve()
        if output_dir is not None and str(output_dir):
            folders["output"] = Path(output_dir).resolve()
        return cls(folders=folders, device=device or default_device(), allow_pickle=allow_pickle)

    def folder(self, role: str, *subfolders: str, create: bool = False) -> Path:
        """The directory for ``role`` (optionally a confined subfolder of it)."""
        try:
            root = self.folders[role]
        except KeyError:
            raise KeyError(f"unknown folder role {role!r}") from None
        path = confined_path(root, *subfolders) if subfolders else root
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def resolve(self, role: str, *parts: str) -> Path:
        """Resolve a user-supplied name inside a folder, refusing escapes."""
        return confined_path(self.folder(role), *parts)

    def list_files(self, role: str, subfolder: str = "", *, suffixes: tuple[str, ...] = (),
                   dirs_with: str | tuple[str, ...] | None = None,
                   dirs_only: bool = False) -> list[str]:
        """Names (relative, '/'-separated) of the regular files under a folder, sorted
        (as ComfyUI's ``os.path.isfile`` filter: a FIFO, socket or device is never offered,
        as reading one can block for good).

        ``dirs_with`` also lists directories that contain that file name (or one of
        those names), which is how diffusers-format model folders (``model_index.json``)
        show up; ``dirs_only`` lists only those directories.
        """
        markers = (dirs_with,) if isinstance(dirs_with, str) else tuple(dirs_with or ())
        try:
            root = self.folder(role, subfolder) if subfolder else self.folder(role)
        except (KeyError, ValueError):
            if subfolder:  # e.g. models/vae a symlink to another disk: say why it is empty
                first = self.folders.get(role, Path()) / subfolder.split("/")[0]
                if first.is_symlink():
                    _note_outside(first, self.folders[role])
            return []
        if not root.is_dir():
            return []
        names: list[str] = []
        real_root = root.resolve()

        def inside(path: Path) -> bool:  # a symlink out of the folder is not offered
            if not path.is_symlink():
                return True
            try:
                target = path.resolve(strict=True)
            except (OSError, RuntimeError):  # a loop or a dangling link: nothing to offer
                return False
            if target == real_root or real_root in target.parents:
                return True
            _note_outside(path, root)
            return False

        # the real folders on the way to each walked one: a link back to one of them (a
        # cycle) is not followed
        chains: dict[str, frozenset[Path]] = {str(root): frozenset({real_root})}
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            here = Path(dirpath)
            chain = chains.pop(dirpath, frozenset())
            if here != root and any(m in filenames for m in markers):
                names.append(here.relative_to(root).as_posix())
                dirnames[:] = []
                continue
            kept = []
            for d in sorted(d for d in dirnames if not d.startswith(".")):
                # a linked folder that stays inside is listed, as uploads and /view use it
                if not inside(here / d):
                    continue
                real = (here / d).resolve()
                if real not in chain:
                    chains[os.path.join(dirpath, d)] = chain | {real}
                    kept.append(d)
            dirnames[:] = kept
            for name in () if dirs_only else filenames:
                path = here / name
                if (not suffixes or name.lower().endswith(suffixes)) and inside(path) \
                        and path.is_file():
                    names.append(path.relative_to(root).as_posix())
        # a name that is not UTF-8 (bytes Linux allows) cannot travel in JSON or a URL: a
        # client could see it and never use it
        return sorted(n for n in names if lone_surrogate(n) is None)


def _kind(mode: int) -> str | None:
    """What a file of ``mode`` is when it is not a regular file, else None."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def special_file(path: Path) -> str | None:
    """What ``path`` is when it is a FIFO, socket or device (through a symlink), else None
    (a regular file, a folder, or nothing there): opening one to read can wait for good."""
    try:
        kind = _kind(path.stat().st_mode)
    except (OSError, ValueError):  # missing, a loop, a name the file system refuses
        return None
    return None if kind == "a folder" else kind


def not_regular(label: str, kind: str) -> ValueError:
    """The error for a user-named file (``label``, as the user named it) that is ``kind``."""
    return ValueError(f"{label!r} is {kind}, not a regular file: put the file itself "
                      "there, or choose another")


def open_regular(path: Path, label: str) -> BinaryIO:
    """``path`` opened to read in binary, refused (:func:`not_regular`) unless it is a
    regular file. Opened without waiting, so a FIFO swapped in after validation never
    blocks the run; the check is on the opened file, so no swap can slip past it."""
    kind = special_file(path)
    if kind is not None:  # a socket cannot even be opened: say what it is
        raise not_regular(label, kind)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        kind = _kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise not_regular(label, kind)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


_noted: set[str] = set()


def _note_outside(path: Path, root: Path) -> None:
    """Say once why a file a user put there is not offered: it links out of its folder."""
    key = str(path)
    if key in _noted or len(_noted) > 10_000:
        return
    _noted.add(key)
    log.warning("%s is a symlink out of %s: not offered (user paths stay inside their "
                "folder; copy the file there, or point --models-dir / --base-dir at its "
                "folder)", path, root)
