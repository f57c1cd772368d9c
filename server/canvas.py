"""The web canvas: ``web/dist`` when it is built, else a page saying how to build it."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine.paths import PathError, confined_path
from server.errors import ApiError
from server.state import state

STATIC_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".json": "application/json", ".map": "application/json", ".svg": "image/svg+xml",
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
    ".gif": "image/gif", ".ico": "image/x-icon", ".woff": "font/woff", ".woff2": "font/woff2",
    ".ttf": "font/ttf", ".wasm": "application/wasm", ".txt": "text/plain; charset=utf-8",
}
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # keep a ?token= in the page URL to ourselves
}
NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Steerflow</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto">
<h1>Steerflow server is running</h1>
<p>The web canvas is not built. Run <code>make run</code> (or build <code>web/</code>
with <code>npm run build</code>) and reload this page.</p>
<p>The API is available: <a href="/object_info">/object_info</a>,
<a href="/queue">/queue</a>, <a href="/history">/history</a>, websocket <code>/ws</code>.</p>
</body></html>
"""


async def index(request: web.Request) -> web.StreamResponse:
    page = state(request).config.web_dir / "index.html"
    if page.is_file():
        return web.FileResponse(page, headers={**HEADERS, "Content-Type": STATIC_TYPES[".html"],
                                               "Cache-Control": "no-cache"})
    return web.Response(text=NOT_BUILT, content_type="text/html", headers=HEADERS)


async def static(request: web.Request) -> web.StreamResponse:
    return serve_file(request, request.match_info["tail"])


def _other_methods(request: web.Request) -> list[str]:
    """The methods an API route at this exact path takes (a GET /interrupt hits the
    file route, but the answer is ComfyUI's 405, not a missing file)."""
    methods = {route.method for resource in request.app.router.resources()
               if isinstance(resource, web.PlainResource) and resource.canonical == request.path
               for route in resource}
    return sorted(methods - {"GET", "HEAD", "*"})


def serve_file(request: web.Request, tail: str) -> web.StreamResponse:
    """The web app's file at ``tail`` (relative to its folder), or a 404 (405 where an
    API route takes other methods)."""
    if allowed := _other_methods(request):
        raise ApiError(405, "method_not_allowed",
                       f"{request.method} {request.path} is not allowed; use {', '.join(allowed)}",
                       headers={"Allow": ", ".join(allowed)})
    root = state(request).config.web_dir
    missing = ApiError(404, "not_found", f"no route or file /{tail}")
    if not (root / "index.html").is_file():
        raise missing
    try:
        path = confined_path(root, tail)
    except PathError:
        raise missing from None
    ctype = STATIC_TYPES.get(path.suffix.lower())
    try:
        if ctype is None or not path.is_file():
            raise missing
    except OSError:  # e.g. a name too long
        raise missing from None
    return web.FileResponse(path, headers={**HEADERS, "Content-Type": ctype})


# Route names starting with "canvas" are public even when a token is set.
ROUTES: list[tuple[str, str, Any, str]] = [
    ("GET", "/", index, "canvas-index"),
    ("GET", "/{tail:.+}", static, "canvas-static"),
]
