"""ComfyUI's per-user file API: ``/users``, ``/settings``, ``/userdata``, ``/v2/userdata``.

What ComfyUI's frontend stores on the server: its settings (one JSON object per
user, ``user/<user>/comfy.settings.json``) and the user's files — saved
workflows (``workflows/*.json``), ``user.css``, keybindings. Steerflow is
single-user, like ComfyUI without ``--multi-user``: every request is user
``default`` and a ``comfy-user`` header is ignored.

This is a file API, so every name is checked: no empty, ``.`` or ``..`` parts,
no control or Windows-reserved characters, bounded lengths, and the joined path
must stay inside the user's folder after resolving symlinks
(:func:`engine.paths.confined_path`). Bodies are size-capped, and writes are
atomic (a temp file in the destination folder, fsynced, then renamed or linked
into place), so a crash never leaves a half-written workflow or settings file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from engine.paths import PathError, confined_path
from server.errors import ApiError, json_response, storage_error
from server.files import (
    TEMP_PREFIX,
    TEMP_SUFFIX,
    _fsync_dir,
    _is_old_file,
    _link_if_absent,
    _remove,
    _write_temp,
)
from server.routes import strict_loads
from server.state import state

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_USER = "default"
SETTINGS_FILE = "comfy.settings.json"
SETTINGS_LIMIT = 2 << 20  # the frontend's settings are a few KiB
# All settings together: each POST rewrites the whole file, so it must stay small.
SETTINGS_FILE_LIMIT = 4 << 20
SETTING_ID_LIMIT = 256
NAME_LIMIT = 255  # one path part, as most filesystems allow
PATH_LIMIT = 1024
DEPTH_LIMIT = 16
# A backslash would be a folder separator to Windows tools; the other characters
# Windows refuses are fine names here, as in ComfyUI on Linux ("Portrait: v2.json").
_BAD_CHARS = frozenset('<>:"|?*\\' if os.name == "nt" else "\\")
# _write_temp's names (tempfile.mkstemp's 8 random characters): user names cannot
# start with TEMP_PREFIX (check_name), so only our own half-written files match.
_WRITE_TEMP = re.compile(rf"^{re.escape(TEMP_PREFIX)}[a-z0-9_]{{8}}{re.escape(TEMP_SUFFIX)}$")
# One lock for read-modify-write of settings files and create-if-absent moves.
_lock = threading.Lock()


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def user_root(request: web.Request) -> Path:
    """The requesting user's folder (not created)."""
    return state(request).config.user_dir / DEFAULT_USER


def check_name(name: str) -> list[str]:
    """A user-data path split into checked parts; ApiError(400) explains a bad one."""
    def bad(why: str) -> ApiError:
        return ApiError(400, "invalid_path", f"invalid file name {name[:80]!r}: {why}",
                        extra_info={"path": name[:PATH_LIMIT]})

    if not name:
        raise bad("empty")
    if len(name) > PATH_LIMIT:
        raise bad(f"longer than {PATH_LIMIT} characters")
    if name.startswith("/"):
        raise bad("absolute paths are not allowed")
    parts = name.split("/")
    if len(parts) > DEPTH_LIMIT:
        raise bad(f"more than {DEPTH_LIMIT} folders deep")
    for part in parts:
        if part in ("", ".", ".."):
            raise bad("empty, '.' and '..' parts are not allowed")
        if len(part) > NAME_LIMIT:
            raise bad(f"a part is longer than {NAME_LIMIT} characters")
        if any(c in _BAD_CHARS or not c.isprintable() for c in part):
            raise bad("control characters and " + "".join(sorted(_BAD_CHARS))
                      + " are not allowed")
        if part.startswith(TEMP_PREFIX):
            raise bad(f"names starting with {TEMP_PREFIX!r} are reserved")
    return parts


def _resolve(root: Path, name: str) -> Path:
    parts = check_name(name)
    try:
        return confined_path(root, *parts)
    except PathError as exc:  # a symlink leading out of the user's folder
        raise ApiError(403, "forbidden_path", str(exc)) from None


def _param(request: web.Request, key: str) -> str:
    # {file} is one URL segment: the frontend sends "workflows%2Fa.json". aiohttp
    # decodes it; a name still holding '%' was encoded twice (ComfyUI decodes once more).
    from urllib.parse import unquote

    value = request.match_info.get(key, "")
    return unquote(value) if "%" in value else value


def _flag(request: web.Request, key: str, default: bool) -> bool:
    """ComfyUI's reading: a flag that defaults on is off only for "false", one that
    defaults off is on only for "true"."""
    value = request.query.get(key)
    if value is None:
        return default
    return value != "false" if default else value.lower() == "true"


def _info(path: Path, root: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": path.relative_to(root).as_posix(), "size": st.st_size,
            "modified": int(st.st_mtime * 1000), "created": int(st.st_ctime * 1000)}


def _visible(name: str) -> bool:
    return not (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX))


# --- users and settings -----------------------------------------------------------
async def get_users(request: web.Request) -> web.Response:
    # Single-user mode: "migrated" tells the frontend whether the server already
    # holds its settings (else it copies them over from the browser's storage once).
    return json_response({"storage": "server", "migrated": user_root(request).is_dir()})


async def post_users(request: web.Request) -> web.Response:
    raise ApiError(400, "single_user", "this server has one user ('default'); "
                   "creating users is not supported")


def read_settings(root: Path) -> dict[str, Any]:
    """The user's settings; a missing or unreadable file reads as no settings."""
    path = root / SETTINGS_FILE
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:  # nested past the parser's depth
        log.warning("ignoring unreadable settings %s: %s", path, type(exc).__name__)
        return {}
    return data if isinstance(data, dict) else {}


def _update_settings(root: Path, change: dict[str, Any]) -> None:
    with _lock:
        path = root / SETTINGS_FILE
        current = read_settings(root)
        if path.exists() and not current and path.stat().st_size > 2:
            # Unreadable (or not an object): keep it for the user rather than overwrite it.
            kept = path.with_name(f"{SETTINGS_FILE}.unreadable-{int(time.time())}")
            path.replace(kept)
            log.warning("%s was no JSON object of settings: kept as %s, new settings "
                        "started", path, kept.name)
        data = json.dumps({**current, **change}, indent=2, ensure_ascii=False).encode()
        old_size = path.stat().st_size if current else 0
        if len(data) > max(SETTINGS_FILE_LIMIT, old_size):  # shrinking one is still fine
            raise ApiError(413, "settings_too_large", f"the settings would take "
                           f"{len(data) / (1 << 20):.1f} MiB, over the "
                           f"{SETTINGS_FILE_LIMIT >> 20} MiB limit for all settings "
                           "together; keep large data in a user file (/userdata) instead",
                           extra_info={"limit_bytes": SETTINGS_FILE_LIMIT})
        _write(root, path, data, overwrite=True)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    if (request.content_length or 0) > limit:
        raise _too_large(limit)
    buf = bytearray()
    while chunk := await request.content.read(1 << 16):
        buf += chunk
        if len(buf) > limit:
            raise _too_large(limit)
    return bytes(buf)


async def _json_body(request: web.Request, limit: int) -> Any:
    body = await read_body(request, limit)
    try:
        value = strict_loads(body)  # no NaN, no 1e999: the settings file stays JSON
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None
    try:  # JSON's "\ud800" (a string cut inside an emoji) has no UTF-8 to store
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ApiError(400, "invalid_text", "the body holds a lone UTF-16 surrogate (half of "
                       "a character, such as an emoji cut in two), which cannot be stored: "
                       "send whole characters") from None
    return value


def _setting_id(request: web.Request) -> str:
    setting_id = request.match_info["id"]
    if len(setting_id) > SETTING_ID_LIMIT or not setting_id.isprintable():
        raise ApiError(400, "invalid_setting_id",
                       f"setting ids are at most {SETTING_ID_LIMIT} printable characters")
    return setting_id


async def get_settings(request: web.Request) -> web.Response:
    return json_response(await _off_loop(read_settings, user_root(request)))


async def get_setting(request: web.Request) -> web.Response:
    settings = await _off_loop(read_settings, user_root(request))
    return json_response(settings.get(_setting_id(request)))


async def post_settings(request: web.Request) -> web.Response:
    change = await _json_body(request, SETTINGS_LIMIT)
    if not isinstance(change, dict):
        raise ApiError(400, "invalid_settings", "the body must be a JSON object of settings")
    await _save_settings(request, change)
    return web.Response(status=200)


async def post_setting(request: web.Request) -> web.Response:
    setting_id = _setting_id(request)
    value = await _json_body(request, SETTINGS_LIMIT)
    await _save_settings(request, {setting_id: value})
    return web.Response(status=200)


async def _save_settings(request: web.Request, change: dict[str, Any]) -> None:
    try:
        await _off_loop(_update_settings, user_root(request), change)
    except OSError as exc:  # a full disk, a read-only folder
        raise storage_error(exc, "cannot save the settings") from None


# --- user data files --------------------------------------------------------------
def _list(root: Path, directory: str, recurse: bool, full_info: bool,
          split: bool) -> list[Any]:
    folder = _resolve(root, directory.rstrip("/"))
    if not folder.is_dir():
        # ComfyUI answers 404; an empty list means the same to its frontend and
        # keeps a fresh install's start-up free of errors.
        return []
    out: list[Any] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        # ComfyUI lists by glob, which skips dot files and folders
        dirnames[:] = sorted(d for d in dirnames if recurse and not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if name.startswith(".") or not _visible(name) or not _inside(path, root) \
                    or not path.is_file():
                continue
            rel = path.relative_to(folder).as_posix()
            if full_info:
                entry = _info(path, folder)
                entry["path"] = rel
                out.append(entry)
            else:
                out.append([rel, *rel.split("/")] if split else rel)
    return out


def _inside(path: Path, root: Path) -> bool:
    try:
        confined_path(root, path.relative_to(root).as_posix())
        return True
    except (PathError, ValueError):
        return False  # a symlink pointing out of the user's folder


async def list_userdata(request: web.Request) -> web.Response:
    directory = request.query.get("dir", "")
    if not directory:
        raise ApiError(400, "missing_dir", "the 'dir' parameter is required")
    result = await _off_loop(_list, user_root(request), directory,
                             _flag(request, "recurse", False),
                             _flag(request, "full_info", False), _flag(request, "split", False))
    return json_response(result)


def _list_v2(root: Path, rel: str) -> list[dict[str, Any]]:
    folder = _resolve(root, rel.rstrip("/")) if rel.rstrip("/") else root
    if not folder.exists():
        if folder == root:
            return []
        raise ApiError(404, "not_found", f"no folder {rel!r}")
    if not folder.is_dir():
        raise ApiError(400, "not_a_folder", f"{rel!r} is not a folder")
    out: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        for name in sorted(dirnames):
            out.append({"name": name, "path": (here / name).relative_to(root).as_posix(),
                        "type": "directory"})
        for name in sorted(filenames):
            path = here / name
            if not _visible(name) or not _inside(path, root):
                continue
            st = path.stat()
            out.append({"name": name, "path": path.relative_to(root).as_posix(),
                        "type": "file", "size": st.st_size, "modified": st.st_mtime})
    out.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
    return out


async def list_userdata_v2(request: web.Request) -> web.Response:
    return json_response(await _off_loop(_list_v2, user_root(request),
                                         request.query.get("path", "")))


async def get_userdata(request: web.Request) -> web.StreamResponse:
    return await _serve(request, _param(request, "file"))


async def _serve(request: web.Request, name: str) -> web.StreamResponse:
    root = user_root(request)
    path = _resolve(root, name)
    css = path == root.resolve() / "user.css"
    if css and not await _off_loop(path.is_file):
        return user_css_missing()
    if not await _off_loop(path.is_file):
        raise ApiError(404, "not_found", f"no user file {name!r}")
    # Arbitrary user content: never rendered in the app's origin (stored XSS).
    ctype = ("text/css" if css else "application/json" if path.suffix == ".json"
             else "application/octet-stream")
    return web.FileResponse(path, headers={
        "Content-Type": ctype, "X-Content-Type-Options": "nosniff",
        "Content-Disposition": "inline" if css else "attachment",
        "Content-Security-Policy": "default-src 'none'; sandbox", "Cache-Control": "no-cache"})


def user_css_missing() -> web.Response:
    # The app links user.css on every page load; no file means no extra styles.
    return web.Response(text="", content_type="text/css",
                        headers={"X-Content-Type-Options": "nosniff"})


async def get_user_css(request: web.Request) -> web.StreamResponse:
    """``/user.css`` beside the app (its index.html links it): the user's own."""
    return await _serve(request, "user.css")


def _parent(root: Path, path: Path) -> None:
    """Create ``path``'s folder, refusing a symlink raced in on the way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        confined_path(root, path.parent.relative_to(root.resolve()).as_posix())
    except (PathError, ValueError) as exc:
        raise ApiError(403, "forbidden_path", f"folder escapes the user's folder: {exc}") \
            from None


def _write(root: Path, path: Path, data: bytes, *, overwrite: bool) -> None:
    _parent(root, path)
    if path.is_dir():
        raise ApiError(409, "is_a_folder", f"{path.name!r} is a folder")
    tmp = _write_temp(path.parent, data)
    try:
        if overwrite:
            os.replace(tmp, path)
        elif not _link_if_absent(tmp, path):
            raise _exists(path.name)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def remove_leftovers(user_dir: Path, *, older_than: float = 0.0) -> list[Path]:
    """Delete the temp files of user-data writes a killed server left (:func:`_write`'s,
    anywhere under ``user_dir``); returns the paths removed. Only our own temp names,
    never through a symlinked folder; files modified less than ``older_than`` seconds
    ago are kept."""
    cutoff = time.time() - older_than
    removed: list[Path] = []
    if not user_dir.is_dir():
        return removed
    for dirpath, _dirs, names in os.walk(user_dir, followlinks=False):
        for name in names:
            path = Path(dirpath, name)
            if _WRITE_TEMP.match(name) and _is_old_file(path, cutoff) and _remove(path):
                removed.append(path)
    if removed:
        log.info("removed %d half-written user file(s) of interrupted saves", len(removed))
    return removed


def _exists(name: str) -> ApiError:
    return ApiError(409, "file_exists", f"{name!r} already exists (send overwrite=true "
                    "to replace it)")


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"the body exceeds {limit >> 20} MiB",
                    extra_info={"limit_bytes": limit})


def _reply(path: Path, root: Path, full_info: bool) -> web.Response:
    rel = path.relative_to(root.resolve())
    return json_response(_info(path, root.resolve()) if full_info else rel.as_posix())


async def post_userdata(request: web.Request) -> web.Response:
    root = user_root(request)
    path = _resolve(root, _param(request, "file"))
    data = await read_body(request, state(request).config.max_prompt_bytes)
    overwrite = _flag(request, "overwrite", True)
    try:
        await _off_loop(lambda: _write(root, path, data, overwrite=overwrite))
    except OSError as exc:
        raise storage_error(exc, f"cannot save {path.name!r}") from None
    return _reply(path, root, _flag(request, "full_info", False))


async def delete_userdata(request: web.Request) -> web.Response:
    name = _param(request, "file")
    path = _resolve(user_root(request), name)
    try:
        await _off_loop(path.unlink)
    except (FileNotFoundError, NotADirectoryError):  # also a path under a file
        raise ApiError(404, "not_found", f"no user file {name!r}") from None
    except IsADirectoryError as exc:
        raise ApiError(400, "not_a_file", f"cannot delete {name!r}: {exc.strerror}") \
            from None
    except PermissionError as exc:  # Linux says EPERM for a folder too
        if path.is_dir():
            raise ApiError(400, "not_a_file", f"cannot delete {name!r}: {exc.strerror}") \
                from None
        raise storage_error(exc, f"cannot delete {name!r}", "delete_failed") from None
    except OSError as exc:  # a read-only file system
        raise storage_error(exc, f"cannot delete {name!r}", "delete_failed") from None
    return web.Response(status=204)


def _move(root: Path, source: Path, dest: Path, overwrite: bool) -> None:
    if not source.is_file():
        raise ApiError(404, "not_found", f"no user file {source.name!r}")
    _parent(root, dest)
    if dest.is_dir():
        raise ApiError(409, "is_a_folder", f"{dest.name!r} is a folder")
    try:
        if overwrite:
            os.replace(source, dest)
        else:
            with _lock:  # create-if-absent: a hard link fails on an existing name
                if not _link_if_absent(source, dest):
                    raise _exists(dest.name)
                source.unlink(missing_ok=True)  # gone already where links are unsupported
    except FileNotFoundError:
        if source.exists():
            raise
        # another move of the same file won the race since the check above
        raise ApiError(404, "not_found", f"no user file {source.name!r}") from None
    _fsync_dir(dest.parent)


async def move_userdata(request: web.Request) -> web.Response:
    root = user_root(request)
    source = _resolve(root, _param(request, "file"))
    dest = _resolve(root, _param(request, "dest"))
    try:
        await _off_loop(_move, root, source, dest, _flag(request, "overwrite", True))
    except OSError as exc:
        raise storage_error(exc, f"cannot move {source.name!r}", "move_failed") from None
    return _reply(dest, root, _flag(request, "full_info", False))


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/users", get_users),
    ("POST", "/users", post_users),
    ("GET", "/settings", get_settings),
    ("POST", "/settings", post_settings),
    ("GET", "/settings/{id}", get_setting),
    ("POST", "/settings/{id}", post_setting),
    ("GET", "/userdata", list_userdata),
    ("GET", "/v2/userdata", list_userdata_v2),
    ("GET", "/userdata/{file}", get_userdata),
    ("POST", "/userdata/{file}", post_userdata),
    ("DELETE", "/userdata/{file}", delete_userdata),
    ("POST", "/userdata/{file}/move/{dest}", move_userdata),
]
# Beside the app, not under /api.
STATIC_ROUTES: list[tuple[str, str, Any]] = [("GET", "/user.css", get_user_css)]
