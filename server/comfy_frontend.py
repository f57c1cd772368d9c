"""What ComfyUI's official web frontend asks of its server, beyond the core protocol.

``steerflow serve --front-end comfyui`` serves the app of the installed
``comfyui-frontend-package`` at ``/`` (:func:`server.config.comfyui_frontend_dir`);
these routes answer what it calls at start and when used:

* ``/extensions`` — URLs of extension scripts to load; node packs contribute
  theirs through :func:`add_extension_source` (empty without any).
* ``/i18n`` (no extra translations), ``/features`` (the server's feature flags).
* ``/experiment/models[/{folder}]`` and ``/internal/folder_paths`` — the model folders;
  ``/experiment/models/preview/{folder}/0/{name}`` — a model's picture (beside it or
  in its safetensors metadata) as WebP;
  ``/internal/files/{input|output|temp}`` — a folder's files, newest first.
* ``/workflow_templates`` (custom nodes' example workflows: none) and
  ``/templates/...`` — the template browser's files, from the
  ``comfyui-workflow-templates`` package when installed, else an empty index.
* ``/docs/{node}/{locale}.md`` — the node Info tab's pages (and their pictures), from
  the ``comfyui-embedded-docs`` package when installed, else 404.
* ``/upload/mask`` — the mask editor's save: the uploaded mask's alpha becomes the
  alpha channel of the original image named by ``original_ref`` (Pillow only).
* ``/internal/logs[/raw]`` and ``PATCH /internal/logs/subscribe`` — the server's recent
  log records (:class:`LogBuffer`: its error report and Logs panel), then each new one as
  a ``logs`` websocket message to subscribed clients.
* ``/view_metadata/{folder}?filename=`` — a ``.safetensors`` model's ``__metadata__``
  (the model library's titles and descriptions), read from its header only.

The per-user file API (settings, saved workflows) is :mod:`server.userdata`.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.paths import PathError, confined_path
from server.errors import ApiError, json_response, storage_error
from server.files import _role, _with_suffix, read_upload, sanitize_filename, store_upload
from server.imaging import (
    ImageTooLarge,
    NotAnImage,
    image_error,
    load_image,
    open_image,
    reencode,
    run_decode,
)
from server.info import _FOLDER_NAME, MODEL_SUFFIXES
from server.routes import read_object
from server.state import state
from server.worker_output import add_sink, remove_sink
from server.ws import Hub

log = logging.getLogger(__name__)

ExtensionSource = Callable[[], Iterable[str]]
EXTENSION_SOURCES: web.AppKey[list[ExtensionSource]] = web.AppKey(
    "steerflow_extension_sources", list)
# Model folders ComfyUI's frontend knows by name (its model library lists them).
MODEL_FOLDERS = ("checkpoints", "loras", "vae", "controlnet", "embeddings", "clip",
                 "clip_vision", "unet", "diffusion_models", "text_encoders", "upscale_models",
                 "style_models", "gligen", "hypernetworks", "photomaker", "t2i_adapter")
LOG_ENTRIES = 300  # as ComfyUI keeps
LOG_SIZE = {"cols": 120, "rows": 30}  # the Logs panel's terminal width follows it
#: the most clients subscribed to the log at once (each gets every line it is connected for)
MAX_LOG_SUBSCRIBERS = 64
MAX_METADATA_HEADER = 8 << 20  # a safetensors header bigger than this is not read
TEMPLATES_PACKAGE = "comfyui_workflow_templates"
EMBEDDED_DOCS_PACKAGE = "comfyui_embedded_docs"
#: what the embedded docs hold beside the static types: the pages, and videos
DOC_TYPES = {".md": "text/markdown; charset=utf-8", ".mp4": "video/mp4", ".webm": "video/webm"}


def add_extension_source(app: web.Application, source: ExtensionSource) -> None:
    """Have ``/extensions`` also list the script URLs ``source()`` returns.

    For node packs' web directories: ``source`` is called on every request (the
    list may change when packs reload) and must be cheap and never block.
    """
    if EXTENSION_SOURCES not in app:
        app[EXTENSION_SOURCES] = []
    app[EXTENSION_SOURCES].append(source)


async def extensions(request: web.Request) -> web.Response:
    urls: list[str] = []
    for source in request.app.get(EXTENSION_SOURCES, []):
        try:
            urls.extend(u for u in source() if isinstance(u, str) and u not in urls)
        except Exception:  # one broken pack must not blank the page
            log.exception("extension source %r failed", source)
    return json_response(urls)


async def i18n(request: web.Request) -> web.Response:
    return json_response({})


def server_features(max_upload_bytes: int) -> dict[str, Any]:
    """ComfyUI's feature flags as this server supports them."""
    return {
        # Previews go to a client that announces this flag too as type 4 frames
        # (with their node: ComfyUI's frontend shows them on it), else as type 1.
        "supports_preview_metadata": True,
        "max_upload_size": max_upload_bytes,
        "extension": {"manager": {"supports_v4": False}},
    }


async def features(request: web.Request) -> web.Response:
    return json_response(server_features(state(request).config.max_upload_bytes))


# --- model folders ----------------------------------------------------------------
def _model_folders(root: Path) -> list[str]:
    present = sorted(p.name for p in root.iterdir()
                     if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    return sorted(set(MODEL_FOLDERS) | set(present))


async def experiment_models(request: web.Request) -> web.Response:
    await state(request).runtime.models_ready()
    root = state(request).env.folder("models")
    names = await asyncio.get_running_loop().run_in_executor(None, _model_folders, root)
    return json_response([{"name": n, "folders": [str(root / n)]} for n in names])


def _model_files(env: Any, folder: str) -> list[dict[str, Any]]:
    """The model library's entries. A diffusers folder beside a single file of the same
    model (``x/`` and ``x.safetensors``, as set-up installs the built-in models) is left
    out: the library shows names without their extension, so both would read "x"."""
    root = env.folder("models", folder)
    names = env.list_files("models", folder, suffixes=MODEL_SUFFIXES,
                           dirs_with="model_index.json")
    present = set(names)
    out = []
    for name in names:
        if not name.endswith(MODEL_SUFFIXES) and any(name + s in present
                                                     for s in MODEL_SUFFIXES):
            continue
        try:
            st = (root / name).stat()
        except OSError:
            continue
        out.append({"name": name, "pathIndex": 0, "modified": st.st_mtime,
                    "created": st.st_ctime, "size": st.st_size})
    return out


async def experiment_models_folder(request: web.Request) -> web.Response:
    env = state(request).env
    folder = request.match_info["folder"]
    await state(request).runtime.models_ready()
    if not _FOLDER_NAME.fullmatch(folder) or folder not in _model_folders(env.folder("models")):
        raise ApiError(404, "unknown_folder", f"no model folder {folder!r}")
    files = await asyncio.get_running_loop().run_in_executor(None, _model_files, env, folder)
    return json_response(files)


#: the picture files beside a model that its library row shows, in the order they are tried
PREVIEW_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg", ".gif", ".bmp")


def model_preview(folder: Path, filename: str) -> Path | bytes | None:
    """The picture ComfyUI's model library shows for the model ``filename`` (its name
    with any suffix: the app asks for ``name.webp``) in ``folder``, as ComfyUI's
    model_manager finds it: ``name.png`` (``.webp``, ``.jpg``...) or
    ``name.preview.png`` beside the model, else a cover image in ``name.safetensors``'s
    metadata (``ssmd_cover_images``, or ``modelspec.thumbnail``'s data URI), read from
    its header only. Every path is confined to ``folder`` after resolving links."""
    stem = os.path.splitext(filename)[0]
    if not stem:
        return None
    for base in (stem, stem + ".preview"):
        for suffix in PREVIEW_SUFFIXES:
            path = _confined_file(folder, base + suffix)
            if path is not None:
                return path
    for suffix in (".safetensors", ".sft"):
        weights = _confined_file(folder, stem + suffix)
        meta = safetensors_metadata(weights) if weights is not None else None
        if meta is not None:
            return _cover_image(meta)
    return None


def _confined_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` when it is a file inside ``folder`` (links resolved)."""
    try:
        path = confined_path(folder, name)
    except PathError:
        return None
    return path if path.is_file() else None


def _cover_image(meta: dict[str, Any]) -> bytes | None:
    """The first cover image a safetensors file's metadata carries, as bytes."""
    import base64
    import binascii

    images: list[Any] = []
    covers = meta.get("ssmd_cover_images")
    if isinstance(covers, str):
        try:
            parsed = json.loads(covers)
        except ValueError:
            parsed = None
        images += parsed if isinstance(parsed, list) else []
    thumb = meta.get("modelspec.thumbnail")
    if isinstance(thumb, str) and thumb.startswith("data:image/") and "," in thumb:
        images.append(thumb.split(",", 1)[1])
    for image in images:
        if isinstance(image, str):
            try:
                return base64.b64decode(image, validate=True)
            except (binascii.Error, ValueError):
                continue
    return None


async def model_preview_image(request: web.Request) -> web.Response:
    """``/experiment/models/preview/{folder}/{path_index}/{filename}``: the model
    library row's picture (:func:`model_preview`) as WebP, as ComfyUI sends it; 404 when
    the model has none (or it is no image)."""
    env = state(request).env
    folder = request.match_info["folder"]
    filename = request.match_info["filename"]
    if not _FOLDER_NAME.fullmatch(folder) or request.match_info["path_index"] != "0":
        raise ApiError(404, "not_found", f"no model folder {folder[:100]!r} (one path, 0)")
    root = env.folder("models", folder)
    loop = asyncio.get_running_loop()
    source = await loop.run_in_executor(None, model_preview, root, filename)
    if source is None:
        raise ApiError(404, "not_found", f"no preview for {filename[:200]!r} in {folder}")
    try:
        body, ctype = await run_decode([("preview", source)], reencode, source, "webp", 90,
                                       None, True)
    except NotAnImage as exc:
        raise ApiError(404, "not_found", f"the preview of {filename[:200]!r} is not a "
                       f"readable image: {exc}") from None
    return web.Response(body=body, content_type=ctype,
                        headers={"Cache-Control": "no-cache"})


async def folder_paths(request: web.Request) -> web.Response:
    env = state(request).env
    root = env.folder("models")
    paths = {n: [str(root / n)] for n in _model_folders(root)}
    for role in ("input", "output", "temp"):
        paths[role] = [str(env.folder(role))]
    return json_response(paths)


def _visible_files(folder: Path) -> list[str]:
    """The folder's own files (no hidden ones, no subfolders), newest first; none if the
    folder does not exist (OSError if it cannot be listed)."""
    try:
        scan = os.scandir(folder)
    except FileNotFoundError:
        return []
    entries = []
    with scan:
        for entry in scan:
            if entry.name.startswith("."):  # hidden, and atomic writes' temp files
                continue
            try:
                if entry.is_file(follow_symlinks=False):
                    entries.append((entry.stat().st_mtime, entry.name))
            except OSError:  # removed meanwhile, or unreadable: not listed
                continue
    return [name for _, name in sorted(entries, key=lambda item: -item[0])]


async def internal_files(request: web.Request) -> web.Response:
    """ComfyUI's ``/internal/files/{input|output|temp}`` (its Assets panel's Imported and
    Generated tabs): the folder's file names, newest first."""
    role = request.match_info["directory_type"]
    if role not in ("input", "output", "temp"):
        raise ApiError(400, "invalid_directory_type",
                       f"{role[:40]!r}: the folder is one of input, output, temp")
    folder = state(request).env.folder(role)
    try:
        names = await asyncio.get_running_loop().run_in_executor(None, _visible_files, folder)
    except OSError as exc:  # ComfyUI's own fails with a bare 500 here
        log.warning("cannot list %s: %s", folder, exc)
        if isinstance(exc, NotADirectoryError):
            raise ApiError(500, "folder_unavailable", f"the {role} folder is not a "
                           "directory (a file is in its place)") from None
        raise storage_error(exc, f"cannot list the {role} folder", "folder_unavailable"
                            ) from None
    return json_response(names)


# --- workflow templates -----------------------------------------------------------
async def global_subgraphs(request: web.Request) -> web.Response:
    # {id: blueprint}: subgraph blueprints shipped by node packs; none yet.
    return json_response({})


async def workflow_templates(request: web.Request) -> web.Response:
    # {custom node module: [example workflow names]}; no node pack ships any yet.
    return json_response({})


def package_folder(package: str, folder: str) -> Path | None:
    """``folder`` inside an installed Python package (a ComfyUI front-end extra), if any."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / folder
    return path if path.is_dir() else None


def templates_dir() -> Path | None:
    """The templates folder of the installed ``comfyui-workflow-templates``, if any."""
    return package_folder(TEMPLATES_PACKAGE, "templates")


async def templates_file(request: web.Request) -> web.StreamResponse:
    from server.canvas import STATIC_TYPES

    tail = request.match_info["tail"]
    root = templates_dir()
    # The logos' index (front ends from 1.3x on ask for it) came after the pinned
    # templates package: without it, no logos, as the front end reads a failed fetch.
    if tail == "index_logo.json" and (root is None or not (root / tail).is_file()):
        return json_response({})
    if root is None:
        if tail.startswith("index") and tail.endswith(".json"):  # index.json, index.fr.json
            return json_response([])  # the template browser then shows no templates
        raise ApiError(404, "not_found", "the comfyui-workflow-templates package is "
                       "not installed")
    try:
        path = confined_path(root, tail)
    except PathError:
        raise ApiError(404, "not_found", f"no template file {tail!r}") from None
    ctype = STATIC_TYPES.get(path.suffix.lower())
    if ctype is None or not path.is_file():
        raise ApiError(404, "not_found", f"no template file {tail!r}")
    return web.FileResponse(path, headers={"Content-Type": ctype,
                                           "X-Content-Type-Options": "nosniff"})


# --- embedded node docs ------------------------------------------------------------
def embedded_docs_dir() -> Path | None:
    """The docs folder of the installed ``comfyui-embedded-docs``, if any."""
    return package_folder(EMBEDDED_DOCS_PACKAGE, "docs")


async def docs_file(request: web.Request) -> web.StreamResponse:
    """``/docs/{node}/{locale}.md`` and the pictures its pages show, from
    ``comfyui-embedded-docs`` as ComfyUI serves them (its node Info tab)."""
    from server.canvas import STATIC_TYPES

    tail = request.match_info["tail"]
    root = embedded_docs_dir()
    if root is None:
        raise ApiError(404, "not_found", "the comfyui-embedded-docs package is not installed")
    try:
        path = confined_path(root, tail)
    except PathError:
        raise ApiError(404, "not_found", f"no doc file {tail!r}") from None
    ctype = DOC_TYPES.get(path.suffix.lower()) or STATIC_TYPES.get(path.suffix.lower())
    if ctype is None or not path.is_file():
        raise ApiError(404, "not_found", f"no doc file {tail!r}")
    return web.FileResponse(path, headers={"Content-Type": ctype,
                                           "X-Content-Type-Options": "nosniff"})


# --- mask upload ------------------------------------------------------------------
def apply_mask(original: bytes | Path, mask: bytes) -> bytes:
    """``original`` as RGBA PNG with ``mask``'s alpha channel as its alpha.

    Like ComfyUI's ``/upload/mask``; a mask of another size is resized to the
    original's. The original's PNG text chunks (its workflow) are kept. Both images are
    read as :func:`server.imaging.open_image` and ``load_image`` read them (the pixel
    limit; a file cut short loads as far as it goes); run it with ``run_decode``.
    """
    from PIL import Image, ImageOps, PngImagePlugin

    with open_image(original) as orig, open_image(mask) as alpha_src:
        load_image(orig)  # first: reading a PNG's text chunks past its pixels loads it
        load_image(alpha_src)
        info = PngImagePlugin.PngInfo()
        for key, value in (getattr(orig, "text", None) or {}).items():
            info.add_text(key, value)
        # upright, as the editor showed it and Load Image reads it (a phone's JPEG); in
        # place and without needless copies: an 8192² original is 256 MB a copy
        ImageOps.exif_transpose(orig, in_place=True)
        out = orig if orig.mode == "RGBA" else orig.convert("RGBA")
        alpha = (alpha_src.getchannel("A") if alpha_src.mode in ("RGBA", "LA")
                 else alpha_src.convert("RGBA").getchannel("A"))
        if alpha.size != out.size:
            alpha = alpha.resize(out.size, Image.Resampling.BILINEAR)
        out.putalpha(alpha)
        buf = io.BytesIO()
        out.save(buf, format="PNG", compress_level=4, pnginfo=info)
    return buf.getvalue()


async def upload_mask(request: web.Request) -> web.Response:
    form = await read_upload(request, "mask.png", " (the mask)")
    original = _original_path(state(request).env, form.fields.get("original_ref", ""))
    try:  # bounded as /view's re-encodes are: one pool, one pixel limit
        png = await run_decode([("the original", original), ("the mask", form.data)],
                               apply_mask, original, form.data)
    except Exception as exc:  # Pillow raises many types for bad data
        err = image_error(exc)
        if isinstance(err, ImageTooLarge):
            raise ApiError(413, "too_large", str(err)) from None
        raise ApiError(415, "not_an_image", f"cannot combine the mask with the original: "
                       f"{err}") from None
    name = _with_suffix(sanitize_filename(form.filename), "PNG")
    return await store_upload(form, name, png)


def _original_path(env: Any, ref_text: str) -> Path:
    try:
        ref = json.loads(ref_text)
    except ValueError:
        ref = None
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
        raise ApiError(400, "invalid_original_ref", "original_ref must be a JSON object "
                       "with 'filename' (and optionally 'subfolder' and 'type')")
    filename, role = ref["filename"], ref.get("type") or None
    for tag in ("input", "output", "temp"):  # ComfyUI's annotated "name.png [input]"
        if filename.endswith(f" [{tag}]"):
            filename, role = filename[: -len(tag) - 3], tag
    role = _role(role, "output")
    subfolder = ref.get("subfolder") or ""
    if not isinstance(subfolder, str):
        raise ApiError(400, "invalid_original_ref", "original_ref.subfolder must be a string")
    try:
        path = env.resolve(role, subfolder, filename)
    except PathError as exc:
        raise ApiError(403, "forbidden_path", str(exc)) from None
    if not path.is_file():
        raise ApiError(404, "not_found", f"no original image {filename!r} in {role}")
    return path


# --- server logs -----------------------------------------------------------------
class LogBuffer(logging.Handler):
    """The last LOG_ENTRIES log records of this process as ComfyUI's ``{"t", "m"}``
    entries, each also sent as a ``logs`` websocket message to subscribed clients.

    On the root logger from the server's start to its cleanup: what the server logs
    (warnings and errors, a failed prompt's error and traceback among them; with
    ``--verbose`` also info), and what worker processes print (their log lines, a custom
    node's ``print``, progress bars: :mod:`server.worker_output`), as ComfyUI's panel
    shows its one process's output. ``emit`` and ``output`` may run on any thread: the
    hub's posting is thread-safe.
    """

    def __init__(self, hub: Hub):
        super().__init__(logging.INFO)
        self.hub = hub
        self.entries: deque[dict[str, str]] = deque(maxlen=LOG_ENTRIES)
        # client ids, oldest first (a dict keeps the order): at most MAX_LOG_SUBSCRIBERS,
        # and a line goes only to those connected, so made-up ids cost nothing per line
        self.subscribers: dict[str, None] = {}
        self._guard = threading.Lock()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = {"t": datetime.fromtimestamp(record.created).isoformat(),
                     "m": self.format(record) + "\n"}
        except Exception:
            self.handleError(record)
            return
        self._add(entry)

    def output(self, text: str) -> None:
        """A worker's printed text, as it came (ComfyUI's entries are its writes too)."""
        self._add({"t": datetime.now().isoformat(), "m": text})

    def _add(self, entry: dict[str, str]) -> None:
        if len(entry["m"]) > MAX_LOG_ENTRY_CHARS:  # 300 entries of 20 MB each were 6 GB
            cut = len(entry["m"]) - MAX_LOG_ENTRY_CHARS
            entry = {**entry, "m": f"{entry['m'][:MAX_LOG_ENTRY_CHARS]}... ({cut} characters "
                                   "more, in the server log)\n"}
        with self._guard:
            self.entries.append(entry)
            subscribers = [sid for sid in self.subscribers if sid in self.hub.clients]
        for sid in subscribers:
            self.hub.post_event(sid, "logs", {"entries": [entry], "size": LOG_SIZE})

    def snapshot(self) -> list[dict[str, str]]:
        with self._guard:
            return list(self.entries)

    def subscribe(self, sid: str, enabled: bool) -> None:
        with self._guard:
            self.subscribers.pop(sid, None)
            if enabled:
                self.subscribers[sid] = None
                while len(self.subscribers) > MAX_LOG_SUBSCRIBERS:  # the oldest goes
                    del self.subscribers[next(iter(self.subscribers))]


LOG_BUFFER: web.AppKey[LogBuffer] = web.AppKey("steerflow_log_buffer", LogBuffer)
MAX_LOG_ENTRY_CHARS = 64 * 1024  # a record's text kept for /internal/logs


def install_log_buffer(app: web.Application, hub: Hub) -> None:
    """Keep the server's log records for ``/internal/logs`` while ``app`` runs."""
    buffer = app[LOG_BUFFER] = LogBuffer(hub)

    async def start(_app: web.Application) -> None:
        logging.getLogger().addHandler(buffer)
        add_sink(buffer.output)

    async def stop(_app: web.Application) -> None:
        logging.getLogger().removeHandler(buffer)
        remove_sink(buffer.output)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


async def logs(request: web.Request) -> web.Response:
    # ComfyUI's error report quotes this: the entries as one text
    return json_response("".join(f"{e['t']} - {e['m']}"
                                 for e in request.app[LOG_BUFFER].snapshot()))


async def logs_raw(request: web.Request) -> web.Response:
    return json_response({"entries": request.app[LOG_BUFFER].snapshot(), "size": LOG_SIZE})


async def logs_subscribe(request: web.Request) -> web.Response:
    body = await read_object(request)
    sid, enabled = body.get("clientId"), body.get("enabled")
    if not isinstance(sid, str) or not sid or len(sid) > 200 or not isinstance(enabled, bool):
        raise ApiError(400, "invalid_request", "expected {\"clientId\": string, "
                       "\"enabled\": boolean}")
    request.app[LOG_BUFFER].subscribe(sid, enabled)
    return web.Response(status=200)


# --- model metadata ---------------------------------------------------------------
def safetensors_metadata(path: Path) -> dict[str, Any] | None:
    """The ``__metadata__`` of a ``.safetensors`` file's header (None: none or unreadable)."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            (length,) = struct.unpack("<Q", head)
            if length > MAX_METADATA_HEADER:
                return None
            header = json.loads(f.read(length))
    except (OSError, ValueError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else None


async def view_metadata(request: web.Request) -> web.Response:
    # As ComfyUI: an empty 404 when there is nothing to show (its frontend parses
    # any body it gets as the metadata).
    env = state(request).env
    folder = request.match_info["folder"]
    filename = request.query.get("filename", "")
    if not _FOLDER_NAME.fullmatch(folder) or not filename.endswith(".safetensors"):
        return web.Response(status=404)
    try:
        path = confined_path(env.folder("models", folder), filename)
    except PathError:
        return web.Response(status=404)
    meta = await asyncio.get_running_loop().run_in_executor(None, safetensors_metadata, path)
    return web.Response(status=404) if meta is None else json_response(meta)


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/extensions", extensions),
    ("GET", "/i18n", i18n),
    ("GET", "/features", features),
    ("GET", "/experiment/models", experiment_models),
    ("GET", "/experiment/models/{folder}", experiment_models_folder),
    ("GET", "/experiment/models/preview/{folder}/{path_index}/{filename:.+}",
     model_preview_image),
    ("GET", "/internal/folder_paths", folder_paths),
    ("GET", "/internal/files/{directory_type}", internal_files),
    ("GET", "/workflow_templates", workflow_templates),
    ("GET", "/global_subgraphs", global_subgraphs),
    ("POST", "/upload/mask", upload_mask),
    ("GET", "/view_metadata/{folder}", view_metadata),
    ("GET", "/internal/logs", logs),
    ("GET", "/internal/logs/raw", logs_raw),
    ("PATCH", "/internal/logs/subscribe", logs_subscribe),
]
# The template browser and the node Info tab fetch these beside the app, not under /api.
STATIC_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/templates/{tail:.+}", templates_file),
    ("GET", "/docs/{tail:.+}", docs_file),
]
