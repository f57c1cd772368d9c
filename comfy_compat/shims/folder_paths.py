"""ComfyUI's ``folder_paths``, backed by Steerflow's :class:`engine.Environment` folders.

Model folders are ``<models>/<name>`` (``checkpoints``, ``loras``, ``vae``,
``controlnet``, ...); input, output and temp are the environment's, created when a
pack asks for them during a run, schema or validation (ComfyUI creates them at start;
packs list them unguarded). Names a
workflow supplies (``get_full_path``, ``get_annotated_filepath``,
``get_save_image_path``) are confined to their folder after resolving ``..`` and
symlinks (:func:`engine.paths.confined_path`); folders a pack registers itself
(``add_model_folder_path``) are trusted like the pack's code.

``folder_names_and_paths`` is a real dict that packs may extend; its standard
entries follow the current environment (updated whenever these functions run), and
``custom_nodes`` lists the folders the packs loaded so far came from.
``models_dir``, ``base_path`` and the other ``*_directory`` attributes are read
from the current environment on access.
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from comfy_compat import runtime
from engine.paths import PathError, confined_path

log = logging.getLogger(__name__)

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl",
                           ".sft"}
_STANDARD = {
    "checkpoints": supported_pt_extensions, "configs": {".yaml"},
    "loras": supported_pt_extensions, "vae": supported_pt_extensions,
    "text_encoders": supported_pt_extensions, "clip": supported_pt_extensions,
    "diffusion_models": supported_pt_extensions, "unet": supported_pt_extensions,
    "clip_vision": supported_pt_extensions, "style_models": supported_pt_extensions,
    "embeddings": supported_pt_extensions, "diffusers": {"folder"},
    "vae_approx": supported_pt_extensions, "controlnet": supported_pt_extensions,
    "t2i_adapter": supported_pt_extensions, "gligen": supported_pt_extensions,
    "upscale_models": supported_pt_extensions, "hypernetworks": supported_pt_extensions,
    "photomaker": supported_pt_extensions, "classifiers": {""},
    "model_patches": supported_pt_extensions, "audio_encoders": supported_pt_extensions,
}

class _FolderTable(dict[str, tuple[list[str], set[str]]]):
    """``folder_names_and_paths``: a real dict; ``["custom_nodes"]`` (WAS reads it at its
    import) are the folders the packs loaded so far came from, unless a pack set it."""

    def __missing__(self, key: str) -> tuple[list[str], set[str]]:
        if key == "custom_nodes":
            return _custom_node_folders(), set()
        raise KeyError(key)


def _custom_node_folders() -> list[str]:
    from engine.registry import CUSTOM_PACKAGE

    folders: dict[str, None] = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith(f"{CUSTOM_PACKAGE}.") or name.count(".") != 1:
            continue
        file = getattr(module, "__file__", None)
        if not file:
            continue
        spec = getattr(module, "__spec__", None)
        package = spec is not None and spec.submodule_search_locations is not None
        path = Path(file).parent
        folders[str(path.parent if package else path)] = None
    return list(folders)


folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = _FolderTable()
_synced: dict[str, str] = {}  # standard name -> the environment path we put in its list
_synced_root: str | None = None


def _sync() -> None:
    """Point the standard entries at the current environment's models folder."""
    global _synced_root
    models = str(runtime.current_environment().folder("models"))
    if models == _synced_root:
        return
    for name, extensions in _STANDARD.items():
        paths, _ = folder_names_and_paths.setdefault(name, ([], set(extensions)))
        new, old = os.path.join(models, name), _synced.get(name)
        if old in paths:
            paths[paths.index(old)] = new
        elif new not in paths:
            paths.insert(0, new)
        _synced[name] = new
    _synced_root = models


def __getattr__(name: str) -> Any:
    env = runtime.current_environment()
    if name == "models_dir":
        return str(env.folder("models"))
    if name == "base_path":
        return str(env.folder("models").parent)
    if name in ("output_directory", "input_directory", "temp_directory"):
        return str(env.folder(name.partition("_")[0]))
    if name == "user_directory":
        return str(_user_root())
    from comfy_compat.shims._missing import missing_message

    raise AttributeError(missing_message(f"folder_paths.{name}"))


def _user_root() -> Path:
    """ComfyUI's ``user/`` beside input/ (where the server keeps settings and workflows)."""
    return runtime.current_environment().folder("input").parent / "user"


def get_user_directory() -> str:
    """``<base>/user``, created if missing (ComfyUI creates it at start; packs write there
    at their import)."""
    root = _user_root()
    if not runtime.is_fallback_environment():
        root.mkdir(parents=True, exist_ok=True)
    return str(root)


def _user_name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name \
            or "\\" in name or "\0" in name:
        return f"not a user name: {name!r}"
    return None


def get_system_user_directory(name: str = "system") -> str:
    """A system user's folder ``user/__<name>`` (ComfyUI's, hidden from the web API)."""
    if (problem := _user_name_problem(name)) is not None or name.startswith("__"):
        raise ValueError(problem or f"a system user's name is given without '__': {name!r}")
    return os.path.join(get_user_directory(), f"__{name}")


def get_public_user_directory(user_id: str) -> str | None:
    """A user's folder ``user/<user_id>``; None for a system user (``__``) or a bad name."""
    if _user_name_problem(user_id) is not None or user_id.startswith("__"):
        return None
    return os.path.join(get_user_directory(), user_id)


def get_input_subfolders() -> list[str]:
    """Every folder under input/ (relative, '/'-separated, sorted), skipping dot-folders."""
    base = Path(get_input_directory())
    found: list[str] = []
    for dirpath, dirnames, _ in os.walk(base, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend((Path(dirpath) / d).relative_to(base).as_posix() for d in dirnames)
    return sorted(found)


def recursive_search(directory: str, excluded_dir_names: list[str] | None = None
                     ) -> tuple[list[str], dict[str, float]]:
    """ComfyUI's: the files under ``directory`` (relative paths) and each folder's
    modification time (symlinked folders are not followed)."""
    if not os.path.isdir(directory):
        return [], {}
    excluded = set(excluded_dir_names or ())
    files: list[str] = []
    dirs: dict[str, float] = {}
    with contextlib.suppress(OSError):
        dirs[directory] = os.path.getmtime(directory)
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
        dirnames[:] = [d for d in dirnames if d not in excluded]
        files.extend(os.path.relpath(os.path.join(dirpath, f), directory) for f in filenames)
        for d in dirnames:
            path = os.path.join(dirpath, d)
            with contextlib.suppress(OSError):
                dirs[path] = os.path.getmtime(path)
    return files, dirs


class CacheHelper:
    """ComfyUI's ``folder_paths.cache_helper``: a memo of file listings, kept only inside
    ``with cache_helper:`` (outside it, ``get`` gives the default and ``set`` keeps nothing)."""

    def __init__(self) -> None:
        self.cache: dict[str, Any] = {}
        self.active = False

    def get(self, key: str, default: Any = None) -> Any:
        return self.cache.get(key, default) if self.active else default

    def set(self, key: str, value: Any) -> None:
        if self.active:
            self.cache[key] = value

    def clear(self) -> None:
        self.cache.clear()

    def __enter__(self) -> CacheHelper:
        self.active = True
        return self

    def __exit__(self, *_exc: object) -> None:
        self.active = False
        self.clear()


cache_helper = CacheHelper()


def _role_folder(role: str) -> str:
    """input/output/temp of the current environment, created if missing (ComfyUI creates
    them at start, and packs list them unguarded), except in the import-time stand-in
    environment (see :func:`comfy_compat.runtime.is_fallback_environment`)."""
    create = not runtime.is_fallback_environment()
    return str(runtime.current_environment().folder(role, create=create))


def get_input_directory() -> str:
    return _role_folder("input")


def get_output_directory() -> str:
    return _role_folder("output")


def get_temp_directory() -> str:
    return _role_folder("temp")


def get_directory_by_type(type_name: str) -> str | None:
    if type_name in ("input", "output", "temp"):
        return _role_folder(type_name)
    return None


def add_model_folder_path(folder_name: str, full_folder_path: str,
                          is_default: bool = False) -> None:
    """Register a folder for ``folder_name`` (first when ``is_default``)."""
    _sync()
    paths, _ = folder_names_and_paths.setdefault(folder_name, ([], set()))
    if full_folder_path in paths:
        paths.remove(full_folder_path)
    if is_default:
        paths.insert(0, full_folder_path)
    else:
        paths.append(full_folder_path)


def get_folder_paths(folder_name: str) -> list[str]:
    _sync()
    return list(folder_names_and_paths[folder_name][0])


def filter_files_extensions(files: Iterable[str], extensions: Iterable[str]) -> list[str]:
    exts = {e.lower() for e in extensions}
    return sorted(f for f in files if not exts or os.path.splitext(f)[1].lower() in exts)


def filter_files_content_types(files: Iterable[str], content_types: Iterable[str]) -> list[str]:
    """Files whose guessed MIME type is one of ``content_types`` ("image", "video", ...)."""
    wanted = set(content_types)
    result = []
    for name in files:
        mime = mimetypes.guess_type(name, strict=False)[0] or ""
        if mime.partition("/")[0] in wanted:
            result.append(name)
    return result


def _walk(root: str, extensions: set[str]) -> list[str]:
    """Files under ``root`` (relative, '/'-separated), skipping dot-folders."""
    base = Path(root)
    if not base.is_dir():
        return []
    names = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not extensions or os.path.splitext(name)[1].lower() in extensions:
                names.append((Path(dirpath) / name).relative_to(base).as_posix())
    return names


def get_filename_list(folder_name: str) -> list[str]:
    """Every model file of ``folder_name`` (its extensions), sorted; [] if unknown."""
    _sync()
    entry = folder_names_and_paths.get(folder_name)
    if entry is None:
        return []
    paths, extensions = entry
    exts = {e.lower() for e in extensions if e and e != "folder"}
    names: set[str] = set()
    for root in paths:
        names.update(_walk(root, exts))
    return sorted(names)


def get_full_path(folder_name: str, filename: str) -> str | None:
    """The file ``filename`` in ``folder_name``'s folders, confined to them; None if absent."""
    _sync()
    entry = folder_names_and_paths.get(folder_name)
    if entry is None:
        return None
    for root in entry[0]:
        try:
            path = confined_path(root, filename)
        except PathError as exc:
            log.warning("folder_paths.get_full_path(%r, %r): %s", folder_name, filename, exc)
            return None
        if path.is_file():
            return str(path)
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"model {filename!r} not found in {folder_name!r} "
                                f"({', '.join(folder_names_and_paths.get(folder_name, ([],))[0])})")
    return path


def annotated_filepath(name: str) -> tuple[str, str | None]:
    """``"a.png [output]"`` → ``("a.png", output folder)``; no annotation → ``(name, None)``."""
    for role in ("output", "input", "temp"):
        suffix = f" [{role}]"
        if name.endswith(suffix):
            return name[: -len(suffix)], get_directory_by_type(role)
    return name, None


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    """Path of an annotated name (input folder by default), confined to its folder."""
    name, base = annotated_filepath(name)
    base = base or default_dir or get_input_directory()
    return str(confined_path(base, name))


def exists_annotated_filepath(name: str) -> bool:
    try:
        return os.path.exists(get_annotated_filepath(name))
    except PathError:
        return False


def get_save_image_path(filename_prefix: str, output_dir: str, image_width: int = 0,
                        image_height: int = 0) -> tuple[str, str, int, str, str]:
    """``(folder, filename, counter, subfolder, filename_prefix)`` for the next image.

    ``%width%``/``%height%`` are replaced; the folder is confined to ``output_dir``
    (a prefix with ``..`` is refused); the counter follows the highest existing one.
    """
    filename_prefix = (filename_prefix.replace("%width%", str(image_width))
                       .replace("%height%", str(image_height)))
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    try:
        folder = confined_path(output_dir, subfolder) if subfolder else Path(output_dir)
    except PathError as exc:
        raise ValueError(f"saving image outside the output folder is not allowed: {exc}; "
                         f"use a filename_prefix inside it (got {filename_prefix!r})") from None
    pattern = re.compile(re.escape(filename) + r"_(\d+)")
    counter = 0
    if folder.is_dir():
        for entry in os.listdir(folder):
            match = pattern.match(entry)
            if match:
                counter = max(counter, int(match.group(1)))
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder), filename, counter + 1, subfolder, filename_prefix


_sync()
