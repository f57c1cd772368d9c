"""Read-only information routes: node schemas, system, models, saved workflows."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from engine.paths import PathError, confined_path
from server.errors import ApiError, dumps, json_response
from server.state import state

MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")  # what the loaders read
_FOLDER_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,100}")
T = TypeVar("T")


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking work (directory walks, schema building) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


# ``"upload": kind`` on a COMBO input is ComfyUI's ``"<kind>_upload": true``, which its
# frontend reads to add the upload button and the image preview (Load Image).
UPLOAD_FLAGS = {"image": "image_upload", "video": "video_upload", "audio": "audio_upload"}


def comfy_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A node's schema with ComfyUI's spelling of our options added (in place)."""
    for section in (schema.get("input") or {}).values():
        for spec in (section or {}).values() if isinstance(section, dict) else ():
            if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict):
                flag = UPLOAD_FLAGS.get(spec[1].get("upload"))  # type: ignore[arg-type]
                if flag is not None:
                    spec[1][flag] = True
    return schema


def comfy_named(schema: dict[str, Any], comfy_name: str | None) -> dict[str, Any]:
    """For ComfyUI's own frontend (``--front-end comfyui``): the node under the name
    ComfyUI shows it by ("KSampler", not our "Sample"), ours kept as a search alias
    (in place)."""
    ours = schema.get("display_name")
    if not comfy_name or comfy_name == ours:
        return schema
    aliases = [a for a in schema.get("search_aliases") or [] if a != comfy_name]
    schema["display_name"] = comfy_name
    schema["search_aliases"] = [*aliases, ours] if isinstance(ours, str) else aliases
    return schema


def _schema_for(registry: Any, type_id: str, schema: dict[str, Any], comfy_names: bool
                ) -> dict[str, Any]:
    schema = comfy_schema(schema)
    named = getattr(registry.get(type_id), "comfy_display_name", None)
    if comfy_names and callable(named):
        comfy_named(schema, named())
    return schema


def _all_schemas(registry: Any, env: Any, comfy_names: bool = False) -> str:
    return dumps({k: _schema_for(registry, k, v, comfy_names)
                  for k, v in registry.schema(env).items()})


def _comfy_names(request: web.Request) -> bool:
    return getattr(state(request).config, "front_end", "steerflow") == "comfyui"


async def object_info(request: web.Request) -> web.Response:
    st = state(request)
    registry = await st.runtime.get_registry()
    text = await _off_loop(_all_schemas, registry, st.env, _comfy_names(request))
    return web.Response(text=text, content_type="application/json")


async def object_info_node(request: web.Request) -> web.Response:
    st = state(request)
    registry = await st.runtime.get_registry()
    type_id = request.match_info["node_class"]
    cls = registry.get(type_id)
    if cls is None:  # as ComfyUI: an empty object, not an error
        return json_response({})
    schema = await _off_loop(cls.schema, st.env)
    return json_response({type_id: _schema_for(registry, type_id, schema,
                                               _comfy_names(request))})


#: options whose values system_stats never shows (a caller with the cookie session must
#: not learn the raw token that the session keeps out of the browser)
SECRET_OPTIONS = ("--token",)


def _shown_argv(argv: list[str]) -> list[str]:
    """The command line with the values of :data:`SECRET_OPTIONS` hidden."""
    shown, hide_next = [], False
    for arg in argv:
        if hide_next:
            shown.append("***")
            hide_next = False
        elif arg in SECRET_OPTIONS:
            shown.append(arg)
            hide_next = True
        elif arg.startswith(tuple(f"{o}=" for o in SECRET_OPTIONS)):
            shown.append(arg.split("=", 1)[0] + "=***")
        else:
            shown.append(arg)
    return shown


#: the most characters of one pack error system_stats gives (the log has the traceback)
MAX_PACK_MESSAGE = 500


async def system_stats(request: web.Request) -> web.Response:
    st = state(request)
    runtime = st.runtime
    device = runtime.device
    total, free = _memory()
    vram_total = int(runtime.worker_info.get("vram_total") or 0)
    vram_free = int(runtime.worker_info.get("vram_free") or 0)
    kind, _, number = device.partition(":")
    if kind == "cpu":  # ComfyUI's: the CPU's "VRAM" is the RAM, so monitors' ratios hold
        vram_total, vram_free = total, free
    return json_response({
        "system": {
            "os": os.name,
            "platform": platform.platform(),
            "python_version": sys.version,
            "embedded_python": False,
            "steerflow_version": _version("steerflow"),
            "comfyui_version": _version("steerflow"),
            "pytorch_version": _version("torch"),
            # ComfyUI's front end shows these in Settings > About
            "required_frontend_version": _required("comfyui-frontend-package"),
            "installed_templates_version": _version("comfyui-workflow-templates"),
            "required_templates_version": _required("comfyui-workflow-templates"),
            "argv": _shown_argv(sys.argv),
            "ram_total": total,
            "ram_free": free,
            "nodes_loaded": runtime.registry is not None,
            # Steerflow's: --fair-queue, prompts of several clients run in turns (round
            # robin over client_id), not in /queue's number order (ComfyUI's)
            "fair_queue": bool(getattr(st.config, "fair_queue", False)),
            "worker": {"pid": runtime.worker_info.get("pid"), "starts": runtime.worker_starts,
                       "error": runtime.worker_error,
                       "cache_entries": runtime.worker_info.get("cache_entries"),
                       "cache_bytes": runtime.worker_info.get("cache_bytes")},
        },
        # Steerflow's own key (ComfyUI's clients ignore it): each worker of the pool,
        # its ``name``, ``host`` (local, ray), ``state`` (starting, idle, busy, down),
        # the ``prompt_id`` it runs, ``pid``, ``device``, ``models`` its cache holds
        # (``ckpt_name=…`` keys, what routing matches), ``runs`` and the last start ``error``.
        "workers": runtime.workers(),
        # node packs that failed to load, or nodes of a pack that were skipped (whole
        # False): the canvas says so on opening (ComfyUI leaves them to its terminal);
        # ``loaded`` false: the packs are still loading, so the list is not final yet
        "packs": {"loaded": runtime.registry is not None, "errors": [
            {"pack": e.pack, "message": str(e.message)[:MAX_PACK_MESSAGE],
             "whole": bool(getattr(e, "whole", True))}
            for e in getattr(runtime.registry, "errors", None) or []]},
        "devices": [{
            "name": device, "type": kind,
            # torch.device's index: None where the device string names none (ComfyUI's)
            "index": int(number) if number.isdigit() else None,
            "vram_total": vram_total, "vram_free": vram_free,
            "torch_vram_total": vram_total, "torch_vram_free": vram_free,
        }],
    })


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _required(dist: str) -> str:
    """The version of ``dist`` Steerflow pins (its package metadata), or ``""``."""
    try:
        for req in metadata.requires("steerflow") or []:
            name, _, rest = req.partition("==")
            if name.strip().lower() == dist and rest:
                return rest.split(";")[0].strip()
    except metadata.PackageNotFoundError:
        pass
    return ""


def _memory() -> tuple[int, int]:
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text()
                      .splitlines() if ":" in line)
        return (int(fields["MemTotal"].split()[0]) * 1024,
                int(fields["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")


# --- models ----------------------------------------------------------------------
async def models(request: web.Request) -> web.Response:
    await state(request).runtime.models_ready()
    root = state(request).env.folder("models")
    names = await _off_loop(lambda: sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if root.is_dir() else [])
    return json_response(names)


async def models_folder(request: web.Request) -> web.Response:
    env = state(request).env
    folder = request.match_info["folder"]
    await state(request).runtime.models_ready()
    try:
        if not _FOLDER_NAME.fullmatch(folder) or not env.folder("models", folder).is_dir():
            raise ApiError(404, "unknown_folder", f"no model folder {folder!r}")
    except PathError:
        raise ApiError(404, "unknown_folder", f"no model folder {folder!r}") from None
    names = await _off_loop(lambda: env.list_files(
        "models", folder, suffixes=MODEL_SUFFIXES, dirs_with="model_index.json"))
    if not _flag(request, "info"):
        return json_response(names)
    # ?info=1: each name with what the canvas shows where a model is picked (native size,
    # what it draws) for the built-in models; read from a JSON file, no weights opened.
    from nodes.diffusion.builtin_models import model_card  # light: json only

    # the model folders the loaders offer as one name (a ControlNet's diffusers folder, with
    # its config.json) get their card too: the canvas looks it up by the name picked
    folders = await _off_loop(lambda: env.list_files(
        "models", folder, dirs_with="config.json", dirs_only=True))
    listed = sorted(set(names) | set(folders))
    return json_response([{"name": n, "info": model_card(n)} for n in listed])


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")


async def embeddings(request: web.Request) -> web.Response:
    env = state(request).env
    names = await _off_loop(lambda: env.list_files("models", "embeddings",
                                                   suffixes=MODEL_SUFFIXES))
    return json_response([os.path.splitext(n)[0] for n in names])


# --- saved workflows --------------------------------------------------------------
THUMBNAILS = "thumbnails"  # workflows/thumbnails/<stem>.png: what each example makes


async def workflows(request: web.Request) -> web.Response:
    """The example workflows' names; ``?details=1``: each one's name, title, description,
    thumbnail URL (relative to the page, or null) and the models it needs beyond the built-in."""
    root = state(request).config.workflows_dir
    if _flag(request, "details"):
        return json_response(await _off_loop(_describe_workflows, root))
    return json_response(await _off_loop(_list_workflows, root))


def _describe_workflows(root: Path) -> list[dict[str, Any]]:
    out = []
    for name in _list_workflows(root):
        try:
            doc = json.loads(confined_path(root, name).read_text("utf-8"))
        except (OSError, ValueError, PathError):
            doc = None
        extra = doc.get("extra") if isinstance(doc, dict) else None
        extra = extra if isinstance(extra, dict) else {}
        stem = Path(name).stem
        title = extra.get("title")
        thumb = Path(name).parent / THUMBNAILS / f"{stem}.png"
        out.append({
            "name": name,
            "title": title if isinstance(title, str) and title else stem.replace("_", " "),
            "description": str(extra.get("description") or ""),
            "thumbnail": f"workflows/{thumb.as_posix()}" if (root / thumb).is_file() else None,
            "requires_models": extra.get("requires_models") or [],
        })
    return out


def _list_workflows(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    base = root.resolve()
    out = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.endswith(".json") and not name.startswith("."):
                rel = os.path.relpath(os.path.join(dirpath, name), base)
                try:
                    confined_path(base, rel)
                except PathError:
                    continue  # a symlink pointing out of the folder
                out.append(Path(rel).as_posix())
    return sorted(out)


async def workflow(request: web.Request) -> web.Response:
    root = state(request).config.workflows_dir
    name = request.match_info["name"]
    if name.endswith(".png") and Path(name).parent.name == THUMBNAILS:
        return await _thumbnail(root, name)
    if not name.endswith(".json"):
        raise ApiError(404, "not_found", "workflow names end in .json")
    try:
        path = confined_path(root, name)
    except PathError as exc:
        raise ApiError(403, "forbidden_path", str(exc)) from None
    try:
        text = await _off_loop(path.read_text, "utf-8")
    except OSError:  # missing, a directory, a name too long...
        raise ApiError(404, "not_found", f"no workflow {name!r}") from None
    except UnicodeDecodeError as exc:
        raise ApiError(422, "invalid_workflow", f"{name} is not UTF-8: {exc}") from None
    try:
        json.loads(text)
    except ValueError as exc:
        raise ApiError(422, "invalid_workflow", f"{name} is not readable JSON: {exc}") \
            from None
    return web.Response(text=text, content_type="application/json")


async def _thumbnail(root: Path, name: str) -> web.Response:
    try:
        path = confined_path(root, name)
    except PathError as exc:
        raise ApiError(403, "forbidden_path", str(exc)) from None
    try:
        data = await _off_loop(path.read_bytes)
    except OSError:
        raise ApiError(404, "not_found", f"no thumbnail {name!r}") from None
    return web.Response(body=data, content_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/object_info", object_info),
    ("GET", "/object_info/{node_class}", object_info_node),
    ("GET", "/system_stats", system_stats),
    ("GET", "/models", models),
    ("GET", "/models/{folder}", models_folder),
    ("GET", "/embeddings", embeddings),
    ("GET", "/workflows", workflows),
    ("GET", "/workflows/{name:.+}", workflow),
]
