"""``GET /view`` and ``POST /upload/image``: images in and out of the data folders.

Every user-supplied name is confined to its folder after resolving symlinks
(:func:`engine.paths.confined_path`). Only images are served, with a fixed
Content-Type, ``nosniff`` and a sandboxing CSP, so nothing is ever rendered
as HTML or script; uploads are size-capped, verified with Pillow and renamed
to a safe name.

An upload is never visible half-written: it goes to a hidden temp file
(``.upload-*.part``) in its destination folder, is flushed and fsynced, then
linked (new name) or renamed (overwrite) into place. A crash can leave only
such temp files, which :func:`remove_leftovers` deletes at start-up.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from engine.environment import RESUMABLE_DIR
from engine.paths import ANNOTATED_NAME, FILE_MODE, PathError, confined_path
from server.errors import ApiError, json_response
from server.imaging import (
    CONTENT_TYPES,
    FORMATS,
    MAGIC,
    ImageTooLarge,
    NotAnImage,
    check_image,
    image_error,
    reencode,
    run_decode,
)
from server.state import state

if TYPE_CHECKING:
    from engine.environment import Environment

log = logging.getLogger(__name__)

ROLES = ("output", "input", "temp")
FIELD_LIMIT = 4096
# ComfyUI's upload forms have a handful of parts (image, type, subfolder, overwrite,
# original_ref); each costs ~0.25 ms to parse, so a 50 MiB body of tiny ones took minutes.
MAX_FORM_PARTS = 32
_BAD_CHARS = set('<>:"|?*')
MAX_NAME_BYTES = 255  # one file or folder name, in bytes (NAME_MAX)
MAX_SUFFIX_BYTES = 16  # a longer ".xyz…" is part of the name, not an extension
# Uploaded names never start with "." (sanitize_filename) nor end in ".part", so
# these temp files can neither clash with an upload nor show up as images.
TEMP_PREFIX = ".upload-"
TEMP_SUFFIX = ".part"
# Hard links are not supported everywhere (FAT, some network shares); there, a
# name check and a rename under this lock keep this process's uploads apart.
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS,
            errno.EMLINK}
_store_lock = threading.Lock()


def is_write_temp(name: str) -> bool:
    """Whether ``name`` is an atomic writer's hidden temp file (``.<name>.<token>.tmp``,
    ``.upload-*.part``): half-written, or left by a killed writer, never a result."""
    lower = name.lower()
    return lower.startswith(".") and (lower.endswith(".tmp") or (
        lower.startswith(TEMP_PREFIX) and lower.endswith(TEMP_SUFFIX)))


def _role(value: str | None, default: str) -> str:
    role = value or default
    if role not in ROLES:
        raise ApiError(400, "invalid_type", f"type must be one of {', '.join(ROLES)}",
                       extra_info={"type": role})
    return role


async def view(request: web.Request) -> web.StreamResponse:
    q = request.query
    filename = q.get("filename", "")
    if not filename:
        raise ApiError(400, "missing_filename", "the 'filename' parameter is required")
    role = _role(q.get("type"), "output")
    # ComfyUI's annotated names ("x.png [input]") name their folder, whatever ``type``
    # says: its frontend previews a Load Image value that way after the mask editor
    # ("clipspace/clipspace-mask-1.png [input]", split at the last '/').
    match = ANNOTATED_NAME.match(filename)
    if match is not None and match["name"]:
        filename, role = match["name"], match["role"]
    try:
        path = state(request).env.resolve(role, q.get("subfolder", ""), filename)
    except PathError as exc:
        raise ApiError(403, "forbidden_path", str(exc)) from None
    if is_write_temp(path.name) or is_write_temp(os.path.basename(filename)):
        raise ApiError(404, "not_found", f"no file {filename!r} in {role}")
    ctype = CONTENT_TYPES.get(path.suffix.lower())
    if ctype is None:
        return _download(path, filename, role)
    try:
        is_image = path.is_file() and _has_magic(path, ctype)
    except OSError:  # a name too long, a permission denied...
        is_image = False
    if not is_image:
        raise ApiError(404, "not_found", f"no {ctype} file {filename!r} in {role}")
    headers = _safe_headers(path.name)
    preview, channel = q.get("preview"), q.get("channel")
    if preview is not None or channel in ("rgb", "a"):
        fmt, quality = _parse_preview(preview)
        if preview is not None and "a" in (channel or ""):
            fmt = "webp"  # as ComfyUI: a preview of the alpha is WebP, never JPEG
        try:  # a preview is at most PREVIEW_SIDE on a side; big ones queue apart
            body, out_type = await run_decode([("", path)], reencode, str(path), fmt,
                                              quality, channel, preview is not None)
        except Exception as exc:  # Pillow raises many types for bad data
            err = image_error(exc)
            if isinstance(err, ImageTooLarge):
                raise ApiError(413, "too_large", f"{filename!r}: {err}; get it without "
                               "preview or channel") from None
            raise ApiError(422, "unreadable_image", f"cannot decode {filename!r}: {err}") \
                from None
        headers["Content-Type"] = out_type
        return web.Response(body=body, headers=headers)
    headers["Content-Type"] = ctype
    return web.FileResponse(path, headers=headers)


#: what other outputs are served as (a <video>/<audio> element needs the media type);
#: anything else is a download of octet-stream, never shown inline
MEDIA_TYPES = {".webm": "video/webm", ".mp4": "video/mp4", ".mov": "video/quicktime",
               ".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg",
               ".ogg": "audio/ogg", ".opus": "audio/opus", ".avif": "image/avif",
               ".exr": "image/x-exr"}


def _download(path: Path, filename: str, role: str) -> web.StreamResponse:
    """A non-image file (Save Image (Advanced)'s EXR, a .latent, a video) as ComfyUI
    serves it: the file, but as an attachment, with no sniffing and no scripts."""
    try:
        found = path.is_file()
    except OSError:
        found = False
    if not found:
        raise ApiError(404, "not_found", f"no file {filename!r} in {role}")
    headers = _safe_headers(path.name)
    headers["Content-Disposition"] = headers["Content-Disposition"].replace(
        "inline;", "attachment;", 1)
    headers["Content-Type"] = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return web.FileResponse(path, headers=headers)


def _parse_preview(preview: str | None) -> tuple[str, int]:
    """``preview=FORMAT[;QUALITY]`` as ComfyUI reads it: a format it does not know is
    WebP, a quality that is not a number is 90. PNG and ``jpg`` are ours besides."""
    if preview is None:
        return "png", 90
    fmt, _, quality = preview.partition(";")
    fmt = fmt.strip().lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in ("webp", "jpeg", "png"):
        fmt = "webp"
    quality = quality.rsplit(";", 1)[-1].strip()
    if not (quality.isascii() and quality.isdigit()):
        return fmt, 90
    digits = quality.lstrip("0") or "0"  # bounded before int(): "9" * 5000 is 100
    return fmt, min(max(int(digits) if len(digits) <= 3 else 100, 1), 100)


def _has_magic(path: Path, ctype: str) -> bool:
    with path.open("rb") as fh:
        head = fh.read(12)
    if ctype == "image/webp" and head[8:12] != b"WEBP":
        return False
    return head.startswith(MAGIC[ctype])


def _safe_headers(name: str) -> dict[str, str]:
    ascii_name = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_"
                         for c in name)
    return {
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f"inline; filename=\"{ascii_name}\"; "
                               f"filename*=UTF-8''{quote(name, safe='')}",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cache-Control": "no-cache",
    }


# --- upload ---------------------------------------------------------------------
@dataclass(frozen=True)
class UploadForm:
    """A multipart upload as ComfyUI's clients send it: the ``image`` file and the fields,
    with the target folder already confined."""

    filename: str
    data: bytes
    fields: dict[str, str]
    role: str
    subfolder: str
    overwrite: bool
    folder: Path


async def read_upload(request: web.Request, default_name: str, what: str) -> UploadForm:
    """Read an upload form (size-limited, no nested parts), or a structured 4xx error."""
    st = state(request)
    limit = st.config.max_upload_bytes
    if (request.content_length or 0) > limit + (64 << 10):
        raise _too_large(limit)
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError, KeyError) as exc:
        raise ApiError(400, "invalid_form", f"expected multipart/form-data: {exc}") from None
    fields: dict[str, str] = {}
    data: bytes | None = None
    filename = default_name
    parts = 0
    try:
        while (part := await reader.next()) is not None:
            parts += 1
            if parts > MAX_FORM_PARTS:
                raise ApiError(400, "too_many_fields", f"the form has more than "
                               f"{MAX_FORM_PARTS} parts; an upload sends 'image' and a few "
                               "fields (type, subfolder, overwrite, original_ref)",
                               extra_info={"limit_parts": MAX_FORM_PARTS})
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "invalid_form", "nested multipart is not accepted")
            if part.name == "image":
                # Browsers escape '"' and newlines as %22/%0A; aiohttp escapes more. An
                # escaped slash stays as sent: decoded, it would cut the name at it.
                sent = part.filename or filename
                decoded = unquote(sent)
                filename = sent if "/" in decoded.replace("\\", "/") else decoded
                data = await _read_limited(part, limit)
            else:
                raw = await _read_limited(part, FIELD_LIMIT, part.name or "")
                fields[part.name or ""] = raw.decode("utf-8", "replace")
    except (ValueError, AssertionError, LookupError, HttpProcessingError) as exc:
        raise ApiError(400, "invalid_form", f"malformed multipart body: {exc}") from None
    if data is None:
        raise ApiError(400, "missing_image", f"the form has no 'image' file{what}")
    role = _role(fields.get("type"), "input")
    subfolder = _clean_subfolder(fields.get("subfolder", ""))
    overwrite = fields.get("overwrite", "").lower() in ("true", "1", "yes")
    return UploadForm(filename, data, fields, role, subfolder, overwrite,
                      _upload_folder(st.env.folder(role), subfolder))


async def store_upload(form: UploadForm, name: str, data: bytes) -> web.Response:
    """Write ``data`` as ``name`` (or a free variant) into the form's folder, atomically;
    ComfyUI's reply ``{name, subfolder, type}``."""
    loop = asyncio.get_running_loop()
    try:
        name = await loop.run_in_executor(None, _store, form.folder, name, data,
                                          form.overwrite)
    except PathError as exc:
        raise ApiError(403, "forbidden_path", str(exc)) from None
    except OSError as exc:  # a full disk, a read-only folder...
        log.warning("upload to %s failed: %s", form.folder, exc)
        if exc.errno == errno.ENAMETOOLONG:  # a file system with a shorter limit
            raise ApiError(400, "invalid_filename", "the file name is too long for the "
                           "file system; upload it under a shorter name") from None
        raise _write_failed(exc, "cannot store the upload") from None
    return json_response({"name": name, "subfolder": form.subfolder, "type": form.role})


def _write_failed(exc: OSError, what: str) -> ApiError:
    """The server's own folder refused a write (a full disk: 507; read-only, forbidden,
    an I/O error: 500): nothing the request can change."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return ApiError(507 if full else 500, "write_failed", f"{what}: {exc.strerror or exc}")


async def upload_image(request: web.Request) -> web.Response:
    form = await read_upload(request, "image.png", "")
    try:
        fmt = await asyncio.get_running_loop().run_in_executor(None, check_image, form.data)
    except ImageTooLarge as exc:
        raise ApiError(413, "too_large", str(exc)) from None
    except NotAnImage as exc:
        raise ApiError(415, "not_an_image", str(exc)) from None
    return await store_upload(form, _with_suffix(sanitize_filename(form.filename), fmt),
                              form.data)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"the upload exceeds {limit >> 20} MiB",
                    extra_info={"limit_bytes": limit})


async def _read_limited(part: BodyPartReader, limit: int, field: str | None = None) -> bytes:
    """The part's bytes, at most ``limit`` (the image's, or a form ``field``'s)."""
    buf = bytearray()
    while chunk := await part.read_chunk(1 << 16):
        buf += chunk
        if len(buf) > limit:
            if field is None:
                raise _too_large(limit)
            raise ApiError(413, "too_large", f"the form field {field[:64]!r} is over "
                           f"{limit} bytes", extra_info={"limit_bytes": limit})
    return bytes(buf)


def _clean_subfolder(subfolder: str) -> str:
    """The ``subfolder`` field as a relative folder path: its parts lose control and other
    non-printable characters, as file names do (sanitize_filename), so no folder is ever
    created with one; what is left is checked by :func:`_upload_folder`, and the reply
    names the folder as it is on disk."""
    subfolder = subfolder.strip().replace("\\", "/")
    absolute = subfolder.startswith("/")
    parts = [p for p in (_printable(part) for part in subfolder.split("/")) if p]
    return ("/" if absolute else "") + "/".join(parts)


def _upload_folder(root: Path, subfolder: str) -> Path:
    if subfolder.startswith("/"):
        raise ApiError(403, "forbidden_path", "absolute subfolders are not allowed")
    parts = [p for p in subfolder.split("/") if p]
    if any(p.startswith(".") for p in parts):
        raise ApiError(403, "forbidden_path", "subfolder names may not start with '.'")
    if any(len(p.encode()) > MAX_NAME_BYTES for p in parts):
        raise ApiError(400, "invalid_path", f"a subfolder name may have at most "
                       f"{MAX_NAME_BYTES} bytes")
    try:
        folder = confined_path(root, *parts)
        folder.mkdir(parents=True, exist_ok=True)
        return confined_path(root, *parts)  # again: a symlink may have raced the mkdir
    except PathError as exc:
        raise ApiError(403, "forbidden_path", str(exc)) from None
    except OSError as exc:
        # The request's fault only where its path meets a file (or a name the file
        # system refuses); a full or read-only disk is the server's, as for the file.
        if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.ENAMETOOLONG, errno.EINVAL):
            raise ApiError(400, "invalid_path", f"cannot create subfolder: "
                           f"{exc.strerror}") from None
        log.warning("upload folder %s cannot be created: %s", root.joinpath(*parts), exc)
        raise _write_failed(exc, "cannot create subfolder") from None


def sanitize_filename(name: str) -> str:
    """A plain file name: no directories, control characters, Windows-reserved
    characters (``<>:"|?*``) or leading dots, at most MAX_NAME_BYTES of UTF-8
    (:func:`fit_name`)."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _printable(name, _BAD_CHARS).strip()
    bare = name.lstrip(".").strip()
    if bare != name and bare.lower() in _UPLOAD_SUFFIXES:
        bare = f"upload.{bare}"  # ".png" was all extension: not a file named "png"
    return fit_name(bare) or "upload"


#: what a name that is only dots and one of these was: an extension without a name
_UPLOAD_SUFFIXES = frozenset({"png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff",
                              "avif", "heic", "json", "txt", "mp4", "webm", "mov", "wav",
                              "mp3", "flac", "safetensors"})


def _printable(text: str, also: set[str] | frozenset[str] = frozenset()) -> str:
    """``text`` without control and other non-printable characters (nor ``also``)."""
    return "".join(c for c in text if c.isprintable() and c not in also)


def fit_name(name: str, extra: str = "", limit: int = MAX_NAME_BYTES) -> str:
    """``name`` with ``extra`` (a " (1)" suffix) before its extension, within ``limit``
    bytes of UTF-8, the file systems' limit on one name (255 on ext4, XFS, btrfs, APFS,
    NTFS's 255 UTF-16 units being more): the stem is cut at a character boundary, the
    extension kept."""
    stem, suffix = os.path.splitext(name)
    if len(suffix.encode()) > MAX_SUFFIX_BYTES:  # not an extension: cut it with the rest
        stem, suffix = name, ""
    room = limit - len(extra.encode()) - len(suffix.encode())
    encoded = stem.encode()
    if len(encoded) > room:
        # decode's "ignore" drops a character the cut went through
        stem = encoded[:max(room, 0)].decode("utf-8", "ignore").rstrip()
    return stem + extra + suffix


def _with_suffix(name: str, fmt: str) -> str:
    canonical, _, accepted = FORMATS[fmt]
    stem, suffix = os.path.splitext(name)
    return name if suffix.lower() in accepted else fit_name((stem or "upload") + canonical)


def _store(folder: Path, name: str, data: bytes, overwrite: bool) -> str:
    """Write ``data`` as ``name`` (or ``name (n)``); an identical existing file is reused.

    Atomic: the data is complete and on disk in a temp file before any final
    name points at it, so a crash at any moment leaves no partial image.
    """
    name = fit_name(name)
    tmp = _write_temp(folder, data)
    try:
        for n in range(10000):
            candidate = name if n == 0 else fit_name(name, f" ({n})")
            path = confined_path(folder, candidate)
            if path.is_dir():
                continue
            if overwrite:
                os.replace(tmp, path)
            elif not _link_if_absent(tmp, path):
                if _same_content(path, data):
                    return candidate
                continue
            _fsync_dir(path.parent)
            return candidate
    finally:
        tmp.unlink(missing_ok=True)  # linked, failed or unused: the temp name goes
    raise ApiError(409, "name_taken", f"too many files named like {name!r}")


def _write_temp(folder: Path, data: bytes) -> Path:
    """``data`` in a new hidden temp file in ``folder``, flushed and fsynced."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _link_if_absent(tmp: Path, path: Path) -> bool:
    """Give ``tmp``'s file the name ``path`` unless it exists; atomic create-if-absent."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
    with _store_lock:  # no hard links here: check, then rename (atomic, may race others)
        if os.path.lexists(path):
            return False
        os.replace(tmp, path)
        return True


def _same_content(path: Path, data: bytes) -> bool:
    try:
        return (path.is_file() and path.stat().st_size == len(data)
                and path.read_bytes() == data)
    except OSError:
        return False


def _fsync_dir(folder: Path) -> None:
    # Makes the new name itself durable (power loss), not only the file's data.
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory
    finally:
        os.close(fd)


# --- start-up clean-up ------------------------------------------------------------
def _stored_files(env: Environment) -> Iterator[tuple[str, Path]]:
    """``(role, path)`` of every file under the input, output, temp and models folders,
    never through a symlinked folder."""
    for role in (*ROLES, "models"):
        root = env.folders.get(role)
        if root is None or not root.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(root, followlinks=False):
            for fname in files:
                yield role, Path(dirpath, fname)


def remove_leftovers(env: Environment, *, older_than: float = 0.0,
                     keep_temp: frozenset[str] = frozenset()) -> list[Path]:
    """Delete what interrupted uploads and runs left; returns the paths removed.

    Removes upload temp files (``.upload-*``) anywhere under the input, output
    and temp folders, the temp files of saves a killed worker left in output/ and
    models/ (:func:`_abandoned_write`: their writer's process is gone, or they are an
    hour old), and everything inside ``temp/`` (not the folder) but the checkpoints
    interrupted trainings resume from (``temp/training``) and the files of
    ``keep_temp`` (paths relative to ``temp/``: the previews the history shows). Never
    follows a symlink: a linked entry is unlinked, its target untouched, and a
    ``temp/`` that is itself a symlink is not emptied. Entries modified less
    than ``older_than`` seconds ago are kept (an upload in progress elsewhere).
    """
    cutoff = time.time() - older_than
    removed: list[Path] = []
    for role, path in _stored_files(env):
        if path.name.startswith(TEMP_PREFIX) and role != "models":
            gone = _is_old_file(path, cutoff)
        else:
            gone = _abandoned_write(path, path.name)
        if gone and _remove(path):
            removed.append(path)
    temp = env.folders.get("temp")
    if temp is not None and temp.is_symlink():
        log.warning("temp folder %s is a symlink; not emptying it", temp)
    elif temp is not None and temp.is_dir():
        # everything but the checkpoints interrupted trainings resume from (their stray
        # temps went above); of those, one no run has touched for weeks is abandoned (a
        # full UNet's DreamBooth state is gigabytes)
        removed.extend(_remove_stale(temp, cutoff, keep=RESUMABLE_DIR, keep_files=keep_temp))
        resumable = temp / RESUMABLE_DIR
        if resumable.is_dir() and not resumable.is_symlink():
            removed.extend(_remove_stale(resumable, time.time() - RESUMABLE_KEEP_SECONDS))
    if removed:
        log.info("removed %d leftover file(s) of interrupted uploads/runs", len(removed))
    return removed


#: the temporary file of an atomic write (a saved image, a trained model, a copied
#: model): ``.<name>.<writer's pid>.<8 hex digits>.tmp`` (Save Image's,
#: nodes.output_files.write_temp_name), ``.<name>.<writer's pid>.tmp`` or
#: ``.<name>.<8 hex digits>.tmp`` (a bare 8-digit number is read as a token, as before)
_WRITE_TEMP = re.compile(r"^\..+?\.(?:(?P<pid>\d{1,10})\.[0-9a-f]{8}|(?P<token>[0-9a-f]{8})"
                         r"|(?P<bare_pid>\d{1,10}))\.tmp$")
#: a token-named temp file this old is no write in progress (another server may share
#: the folder; no single save takes this long)
WRITE_TEMP_AGE = 3600.0


def _abandoned_write(path: Path, name: str) -> bool:
    """Whether ``path`` is what a write killed midway left (its writer is gone)."""
    match = _WRITE_TEMP.match(name)
    if match is None or not _is_old_file(path, time.time()):
        return False
    pid = _writer_pid(match)
    if pid is not None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except (OSError, OverflowError, ValueError):
            return False  # alive (someone else's) or not a pid at all
        return False
    return _is_old_file(path, time.time() - WRITE_TEMP_AGE)


def remove_writes_of(env: Environment, pid: int) -> list[Path]:
    """Delete the temp files of atomic writes that the (dead) process ``pid`` left in
    the output, input, temp and models folders; returns the paths removed.

    The pool calls it when it replaces a killed worker: a kill during a large save
    otherwise left its half-written file until the next start. Never follows a symlink.
    """
    removed: list[Path] = []
    for _role, path in _stored_files(env):
        match = _WRITE_TEMP.match(path.name)
        if match is None or _writer_pid(match) != pid:
            continue
        if _is_old_file(path, time.time()) and _remove(path):
            removed.append(path)
    if removed:
        log.info("removed %d temp file(s) of writes that worker process %d left: %s",
                 len(removed), pid, ", ".join(str(p) for p in removed[:3]))
    return removed


def _writer_pid(match: re.Match[str]) -> int | None:
    """The pid in a :data:`_WRITE_TEMP` name (None: token-named)."""
    pid = match["pid"] or match["bare_pid"]
    return None if pid is None else int(pid)


#: a training checkpoint untouched this long is deleted at start-up (its run was dropped)
RESUMABLE_KEEP_SECONDS = 14 * 24 * 3600


def _remove_stale(folder: Path, cutoff: float, keep: str | None = None,
                  keep_files: frozenset[str] = frozenset()) -> list[Path]:
    """The entries of ``folder`` last modified before ``cutoff``, removed (never followed),
    but the folder named ``keep`` (a symlink of that name goes too) and the regular files
    of ``keep_files`` (paths relative to ``folder``; a folder holding some is emptied of
    the rest)."""
    gone: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return gone
    for entry in entries:
        path = Path(entry.path)
        if entry.name == keep and not entry.is_symlink():
            continue
        if entry.name in keep_files and entry.is_file(follow_symlinks=False):
            continue
        inner = frozenset(k.partition("/")[2] for k in keep_files
                          if k.startswith(entry.name + "/"))
        if inner and entry.is_dir(follow_symlinks=False):
            gone.extend(_remove_stale(path, cutoff, keep_files=inner))
            continue
        if not _is_old(path, cutoff):
            continue
        if entry.is_dir(follow_symlinks=False):
            if _remove_tree(path):
                gone.append(path)
        elif _remove(path):
            gone.append(path)
    return gone


def _is_old(path: Path, cutoff: float) -> bool:
    try:
        return path.lstat().st_mtime <= cutoff
    except OSError:
        return False


def _is_old_file(path: Path, cutoff: float) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_mtime <= cutoff


def _remove(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)
        return False


def _remove_tree(path: Path) -> bool:
    # rmtree never follows symlinks inside the tree (fd-based on Linux)
    errors: list[str] = []
    shutil.rmtree(path, onerror=lambda _f, p, exc: errors.append(f"{p}: {exc[1]}"))
    if errors:
        log.warning("cannot fully remove %s: %s", path, "; ".join(errors[:3]))
    return not errors
