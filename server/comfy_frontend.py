"""What ComfyUI's official web frontend asks of its server, beyond the core protocol.

``steerflow serve --front-end comfyui`` serves the app of the installed
``comfyui-frontend-package`` at ``/`` (:func:`server.config.comfyui_frontend_dir`);
these routes answer what it calls at start and when used:

* ``/extensions`` — URLs of extension scripts to load; node packs contribute
  theirs through :func:`add_extension_source` (empty without any).
* ``/i18n`` (no extra translations), ``/features`` (the server's feature flags).
* ``/experiment/models[/{folder}]`` and ``/internal/folder_paths`` — the model folders.
* ``/workflow_templates`` (custom nodes' example workflows: none) and
  ``/templates/...`` — the template browser's files, from the
  ``comfyui-workflow-templates`` package when installed, else an empty index.
* ``/upload/mask`` — the mask editor's save: the uploaded mask's alpha becomes the
  alpha channel of the original image named by ``original_ref`` (Pillow only).

The per-user file API (settings, saved workflows) is :mod:`server.userdata`.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.paths import PathError, confined_path
from server.errors import ApiError, json_response
from server.files import _role, _with_suffix, read_upload, sanitize_filename, store_upload
from server.info import _FOLDER_NAME, MODEL_SUFFIXES
from server.state import state

log = logging.getLogger(__name__)

ExtensionSource = Callable[[], Iterable[str]]
EXTENSION_SOURCES: web.AppKey[list[ExtensionSource]] = web.AppKey(
    "steerflow_extension_sources", list)
# Model folders ComfyUI's frontend knows by name (its model library lists them).
MODEL_FOLDERS = ("checkpoints", "loras", "vae", "controlnet", "embeddings", "clip",
                 "clip_vision", "unet", "diffusion_models", "text_encoders", "upscale_models",
                 "style_models", "gligen", "hypernetworks", "photomaker", "t2i_adapter")
MAX_MASK_PIXELS = 8192 * 8192
TEMPLATES_PACKAGE = "comfyui_workflow_templates"


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
        # Previews go out as ComfyUI's classic binary frames (type 1), not the
        # metadata variant (type 4) this flag would announce.
        "supports_preview_metadata": False,
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
    root = state(request).env.folder("models")
    names = await asyncio.get_running_loop().run_in_executor(None, _model_folders, root)
    return json_response([{"name": n, "folders": [str(root / n)]} for n in names])


def _model_files(env: Any, folder: str) -> list[dict[str, Any]]:
    root = env.folder("models", folder)
    out = []
    for name in env.list_files("models", folder, suffixes=MODEL_SUFFIXES,
                               dirs_with="model_index.json"):
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
    if not _FOLDER_NAME.fullmatch(folder) or folder not in _model_folders(env.folder("models")):
        raise ApiError(404, "unknown_folder", f"no model folder {folder!r}")
    files = await asyncio.get_running_loop().run_in_executor(None, _model_files, env, folder)
    return json_response(files)


async def folder_paths(request: web.Request) -> web.Response:
    env = state(request).env
    root = env.folder("models")
    paths = {n: [str(root / n)] for n in _model_folders(root)}
    for role in ("input", "output", "temp"):
        paths[role] = [str(env.folder(role))]
    return json_response(paths)


# --- workflow templates -----------------------------------------------------------
async def global_subgraphs(request: web.Request) -> web.Response:
    # {id: blueprint}: subgraph blueprints shipped by node packs; none yet.
    return json_response({})


async def workflow_templates(request: web.Request) -> web.Response:
    # {custom node module: [example workflow names]}; no node pack ships any yet.
    return json_response({})


def templates_dir() -> Path | None:
    """The templates folder of the installed ``comfyui-workflow-templates``, if any."""
    import importlib.util

    spec = importlib.util.find_spec(TEMPLATES_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "templates"
    return folder if folder.is_dir() else None


async def templates_file(request: web.Request) -> web.StreamResponse:
    from server.canvas import STATIC_TYPES

    tail = request.match_info["tail"]
    root = templates_dir()
    if root is None:
        if tail == "index_logo.json":
            return json_response({})
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


# --- mask upload ------------------------------------------------------------------
def apply_mask(original: bytes | Path, mask: bytes) -> bytes:
    """``original`` as RGBA PNG with ``mask``'s alpha channel as its alpha.

    Like ComfyUI's ``/upload/mask``; a mask of another size is resized to the
    original's. The original's PNG text chunks (its workflow) are kept.
    """
    from PIL import Image, PngImagePlugin

    src = io.BytesIO(original) if isinstance(original, bytes) else original
    with Image.open(src) as orig, Image.open(io.BytesIO(mask)) as alpha_src:
        for img in (orig, alpha_src):
            if img.width * img.height > MAX_MASK_PIXELS:
                raise ValueError(f"images are limited to {MAX_MASK_PIXELS} pixels")
        info = PngImagePlugin.PngInfo()
        for key, value in (getattr(orig, "text", None) or {}).items():
            info.add_text(key, value)
        out = orig.convert("RGBA")
        alpha = alpha_src.convert("RGBA").getchannel("A")
        if alpha.size != out.size:
            alpha = alpha.resize(out.size, Image.Resampling.BILINEAR)
        out.putalpha(alpha)
        buf = io.BytesIO()
        out.save(buf, format="PNG", compress_level=4, pnginfo=info)
    return buf.getvalue()


async def upload_mask(request: web.Request) -> web.Response:
    form = await read_upload(request, "mask.png", " (the mask)")
    original = _original_path(state(request).env, form.fields.get("original_ref", ""))
    try:
        png = await asyncio.get_running_loop().run_in_executor(None, apply_mask, original,
                                                               form.data)
    except Exception as exc:  # Pillow raises many types for bad data
        raise ApiError(415, "not_an_image", f"cannot combine the mask with the original: "
                       f"{exc}") from None
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


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/extensions", extensions),
    ("GET", "/i18n", i18n),
    ("GET", "/features", features),
    ("GET", "/experiment/models", experiment_models),
    ("GET", "/experiment/models/{folder}", experiment_models_folder),
    ("GET", "/internal/folder_paths", folder_paths),
    ("GET", "/workflow_templates", workflow_templates),
    ("GET", "/global_subgraphs", global_subgraphs),
    ("POST", "/upload/mask", upload_mask),
]
# The template browser fetches these beside the app, not under /api.
STATIC_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/templates/{tail:.+}", templates_file),
]
