"""Node packs' frontend extensions (ComfyUI's ``WEB_DIRECTORY``), for the official frontend.

A pack's web folder is recorded by the registry (``registry.web_directories``:
pack name → folder). ComfyUI's frontend asks ``GET /extensions`` for the list of
script URLs and imports each, so:

- :func:`extension_scripts` lists ``/extensions/<pack>/<path>.js`` for every
  script under every pack's folder (what ``/extensions`` returns for packs);
- :func:`extension_file` serves ``GET /extensions/{pack}/{path}``: any file in
  that pack's folder, confined to it after resolving ``..`` and symlinks.

Mount with :func:`install` (in ``create_app``, before the app starts): it adds the
file route and feeds the script list to ``/extensions``
(:func:`server.comfy_frontend.add_extension_source`). Until the node packs have
loaded the list is empty; the file route waits for them like ``/object_info``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.paths import PathError, confined_path
from server.canvas import serve_file
from server.errors import ApiError
from server.state import STATE

SCRIPT_SUFFIX = ".js"
# Steerflow's own scripts for ComfyUI's frontend (its node warnings as toasts), served
# as a pack of this name unless a node pack takes the name.
BUILTIN_PACK = "steerflow"
BUILTIN_FOLDER = Path(__file__).resolve().parent / "comfy_extension"


def web_directories(registry: Any) -> dict[str, Path]:
    """Pack name → its web folder, for packs that ship frontend extensions, and
    Steerflow's own."""
    return {BUILTIN_PACK: BUILTIN_FOLDER,
            **dict(getattr(registry, "web_directories", None) or {})}


def extension_scripts(registry: Any) -> list[str]:
    """URLs of the packs' scripts, ``/extensions/<pack>/<relative path>``, sorted."""
    urls: list[str] = []
    for pack, folder in sorted(web_directories(registry).items()):
        root = Path(folder)
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.endswith(SCRIPT_SUFFIX) and not name.startswith("."):
                    rel = (Path(dirpath) / name).relative_to(root).as_posix()
                    urls.append(f"/extensions/{pack}/{rel}")
    return urls


async def extension_file(request: web.Request) -> web.StreamResponse:
    """``GET /extensions/{pack}/{path}``: one file of a pack's web folder."""
    registry = await request.app[STATE].runtime.get_registry()
    pack = request.match_info["pack"]
    folder = web_directories(registry).get(pack)
    if folder is None:  # the web app's own extensions (ComfyUI's frontend: extensions/core)
        return serve_file(request, f"extensions/{pack}/{request.match_info['path']}")
    try:
        path = confined_path(folder, *request.match_info["path"].split("/"))
    except PathError as exc:
        raise ApiError(403, "forbidden_path", str(exc)) from None
    if not path.is_file():
        raise ApiError(404, "not_found", "no such extension file")
    headers = {"Cache-Control": "no-cache"}
    if path.suffix == SCRIPT_SUFFIX:  # browsers refuse modules served as text/plain
        headers["Content-Type"] = "application/javascript"
    return web.FileResponse(path, headers=headers)


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/extensions/{pack}/{path:.+}", extension_file),
]


def install(app: web.Application) -> None:
    """Serve the packs' web folders and list their scripts under ``/extensions``."""
    from server.comfy_frontend import add_extension_source

    for method, path, handler in ROUTES:
        for prefix in ("", "/api"):
            app.router.add_route(method, prefix + path, handler)
    cache: dict[int, list[str]] = {}

    def scripts() -> list[str]:
        registry = app[STATE].runtime.registry
        if registry is None:  # packs still loading: Steerflow's own scripts already
            return extension_scripts(None)
        if id(registry) not in cache:  # one walk per registry, not per request
            cache.clear()
            cache[id(registry)] = extension_scripts(registry)
        return cache[id(registry)]

    add_extension_source(app, scripts)
