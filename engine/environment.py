"""Where a run happens: folders, compute device and user opt-ins."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.paths import confined_path

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
        """Names (relative, '/'-separated) of files under a folder, sorted.

        ``dirs_with`` also lists directories that contain that file name (or one of
        those names), which is how diffusers-format model folders (``model_index.json``)
        show up; ``dirs_only`` lists only those directories.
        """
        markers = (dirs_with,) if isinstance(dirs_with, str) else tuple(dirs_with or ())
        try:
            root = self.folder(role, subfolder) if subfolder else self.folder(role)
        except (KeyError, ValueError):
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
            return target == real_root or real_root in target.parents

        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            here = Path(dirpath)
            if here != root and any(m in filenames for m in markers):
                names.append(here.relative_to(root).as_posix())
                dirnames[:] = []
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in () if dirs_only else filenames:
                if (not suffixes or name.lower().endswith(suffixes)) and inside(here / name):
                    names.append((here / name).relative_to(root).as_posix())
        return sorted(names)
