"""Node packs' HTTP routes, served by forwarding to the worker process.

ComfyUI packs register routes at import (``@PromptServer.instance.routes.get(...)``).
Their handlers belong with their nodes, in the worker process (which imports torch);
this process never calls them. The worker reports the GET/POST routes packs
registered in its ``ready`` message (``pack_routes``: ``[[method, path], ...]``, see
:mod:`comfy_compat.http_bridge`). :func:`pack_routes_middleware` answers a request
whose path matches one of them (also under ``/api``, as ComfyUI serves every route)
and that no route of ours claims — the web app's catch-all file route aside: it
sends the request over the worker channel (:meth:`server.worker.Channel.http`) and
returns the handler's status, a few headers and the body (a file the handler answers
with included: the worker reads it, see :mod:`comfy_compat.http_bridge`).

The path goes to the worker still percent-encoded (``rel_url.raw_path``) and is matched
there as aiohttp matches, so ``/pysssss/view/loras%2Fx`` reaches ``/pysssss/view/{name}``
with ``name`` = ``loras/x``, as in ComfyUI.

At start-up the worker reports its routes seconds after this process loaded the same
packs. Until it has, a request no route of ours claims is held (up to :data:`HOLD`
seconds, polling) rather than answered 404: first, unless it names one of the web app's
files, until this process's own packs are loaded; then, if its path matches a route
those packs registered here, until the worker reports. Still unreported then, it is a
structured 503 ``starting`` with ``Retry-After``. Holding suits a browser best: an
extension's ``import ... from "/pack/x.js"`` or ``fetch`` fails on a 503 and is not
retried, while a held request just loads a little later (ComfyUI itself does not
listen before its packs are loaded).

The security middleware runs first (Host, Origin, token: a pack route is never
public); bodies are bounded (:data:`MAX_BODY`), the worker gets :data:`TIMEOUT`
seconds, and a failure is a structured 502 (504 on timeout, 503 with ``Retry-After``
without a worker).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import sys
import time
from typing import Any

from aiohttp import web

from engine.paths import PathError, confined_path
from server.errors import ApiError, Handler
from server.worker import WorkerDied

MAX_BODY = 8 * 1024 * 1024  # request bytes forwarded
TIMEOUT = 40.0  # seconds; the worker's handler gets 30 of them
HOLD = 60.0  # seconds a request waits at start-up for the worker's routes
RETRY_AFTER = "5"  # seconds, on a 503 while the worker starts or is restarted
POLL = 0.1  # seconds between looks at what the worker reported
#: request headers forwarded: a body's type, and what files' conditional/range answers read
REQUEST_HEADERS = ("Content-Type", "Accept", "Accept-Language", "If-None-Match",
                   "If-Modified-Since", "Range", "If-Range")
RESPONSE_HEADERS = ("Content-Type", "Cache-Control", "Content-Disposition",
                    "Content-Language", "ETag", "Last-Modified", "Accept-Ranges",
                    "Content-Range", "Location")
API_PREFIX = "/api"
_CATCH_ALL = "canvas-static"
_MATCH = web.RequestKey("steerflow_pack_route", bool)  # resolved once per request
# The reported routes and their router, rebuilt when a worker reports others (keyed by
# the routes themselves, so servers sharing a process in tests get theirs).
_routers: dict[tuple[tuple[str, str], ...], web.UrlDispatcher] = {}


def _runtime(app: web.Application) -> Any:
    from server.state import STATE

    state = app.get(STATE)
    return state.runtime if state is not None else None


def _reported(app: web.Application) -> tuple[tuple[str, str], ...] | None:
    """The routes the worker reported; None until a worker has reported (ready)."""
    runtime = _runtime(app)
    routes = runtime.worker_info.get("pack_routes") if runtime is not None else ()
    if routes is None:
        return None
    return _clean(routes)


def _clean(routes: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(routes, list):
        return ()
    return tuple((str(r[0]).upper(), str(r[1])) for r in routes
                 if isinstance(r, list) and len(r) == 2 and str(r[0]).upper() in ("GET", "POST")
                 and isinstance(r[1], str) and r[1].startswith("/"))


def _router(app: web.Application) -> web.UrlDispatcher | None:
    """A router of the reported routes (rebuilt when a worker reports others)."""
    return _router_of(_reported(app) or ())


def _router_of(routes: tuple[tuple[str, str], ...]) -> web.UrlDispatcher | None:
    if not routes:
        return None
    router = _routers.get(routes)
    if router is None:
        router = web.UrlDispatcher()
        for method, path in routes:
            for prefix in ("", API_PREFIX):
                try:
                    router.add_route(method, prefix + path, _unreachable)
                except (ValueError, RuntimeError):  # a malformed or duplicate path
                    continue
        if len(_routers) > 8:
            _routers.clear()
        _routers[routes] = router
    return router


async def _unreachable(request: web.Request) -> web.StreamResponse:
    raise AssertionError("pack routes are forwarded, never handled here")


def _unclaimed(request: web.Request) -> bool:
    """No route of ours answers: none matched, or only the web app's file catch-all."""
    info = request.match_info
    return info.http_exception is not None or \
        getattr(info.route, "name", None) == _CATCH_ALL


async def matched_pack_route(request: web.Request) -> bool:
    """Whether ``request`` goes to a node pack's route (cached on the request); at
    start-up, whether it may (held until the worker reports, :data:`HOLD` at most)."""
    if _MATCH not in request:
        request[_MATCH] = _unclaimed(request) and await _match(request)
    return request[_MATCH]


async def _match(request: web.Request) -> bool:
    app = request.app
    if _reported(app) is None:  # no worker has reported its routes yet
        deadline = time.monotonic() + HOLD
        if not await _expected(request, deadline):
            return False
        await _wait_for_report(app, deadline)
        if _reported(app) is None:
            return True  # forward() answers 503 starting
    return await _resolves(_router(app), request)


async def _resolves(router: web.UrlDispatcher | None, request: web.Request) -> bool:
    return router is not None and (await router.resolve(request)).http_exception is None


async def _expected(request: web.Request, deadline: float) -> bool:
    """While the worker starts: whether ``request`` may be a pack route. This process
    imports the same packs (for validation), so their routes are known here once they
    are loaded: wait for that (a web app file aside), then match the path."""
    runtime = _runtime(request.app)
    if runtime is None:
        return False
    if runtime.registry is None and runtime.load_error is None:
        if _web_app_file(request):  # the page's own files are not held
            return False
        while runtime.registry is None and runtime.load_error is None:
            if time.monotonic() >= deadline:
                return True  # still loading: it may be one
            await asyncio.sleep(POLL)
        if runtime.registry is None:  # the packs failed to load
            return False
    if "comfy_compat.prompt_server" not in sys.modules:  # no ComfyUI pack: no routes
        return False
    from comfy_compat.http_bridge import known_routes

    return await _resolves(_router_of(_clean(known_routes())), request)


def _web_app_file(request: web.Request) -> bool:
    """Whether the web app's catch-all route would answer ``request`` with a file."""
    if getattr(request.match_info.route, "name", None) != _CATCH_ALL:
        return False
    from server.state import STATE

    root = request.app[STATE].config.web_dir
    try:
        return confined_path(root, request.match_info.get("tail", "")).is_file()
    except (PathError, OSError, ValueError):
        return False


async def _wait_for_report(app: web.Application, deadline: float) -> None:
    """Until the worker reports its routes, its start fails, or ``deadline``."""
    runtime = _runtime(app)
    while _reported(app) is None and time.monotonic() < deadline \
            and not getattr(runtime, "worker_error", None):
        await asyncio.sleep(POLL)


@web.middleware
async def pack_routes_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not await matched_pack_route(request):
        return await handler(request)
    return await forward(request)


async def forward(request: web.Request) -> web.Response:
    """Send ``request`` to the worker's pack handler; its answer as a response."""
    from server.state import state

    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "too_large", f"pack route bodies are limited to {MAX_BODY} bytes")
    body = await request.read()  # bounded by the app's client_max_size too
    if len(body) > MAX_BODY:
        raise ApiError(413, "too_large", f"pack route bodies are limited to {MAX_BODY} bytes")
    runtime = state(request).runtime
    if _reported(request.app) is None:  # held HOLD seconds already (matched_pack_route)
        cause = getattr(runtime, "worker_error", None)
        raise ApiError(503, "starting", "the worker process that serves node packs' routes "
                       "is still starting; try again shortly"
                       + (f" (its last start failed: {cause})" if cause else ""),
                       headers={"Retry-After": RETRY_AFTER})
    worker = runtime.worker
    if worker is None or not worker.alive():
        raise ApiError(503, "worker_unavailable", "the worker process that serves node "
                       "packs' routes is not running; try again shortly",
                       headers={"Retry-After": RETRY_AFTER})
    path = request.rel_url.raw_path  # still encoded: the worker matches as aiohttp does
    if path.startswith(API_PREFIX + "/"):
        path = path[len(API_PREFIX):]
    message = {"op": "http", "method": request.method, "path": path,
               "query": [[k, v] for k, v in request.query.items()],
               "headers": {k: request.headers[k] for k in REQUEST_HEADERS
                           if k in request.headers},
               "body": base64.b64encode(body).decode()}
    loop = asyncio.get_running_loop()
    try:
        reply = await loop.run_in_executor(None, worker.http, message, TIMEOUT)
    except WorkerDied as exc:
        raise ApiError(502, "pack_route_error", f"{exc.cause} while answering {path}") from None
    if reply is None:
        raise ApiError(504, "pack_route_timeout", f"the worker did not answer {path} within "
                       f"{TIMEOUT:.0f} s")
    return _response(reply, path)


def _response(reply: dict[str, Any], path: str) -> web.Response:
    status, headers = reply.get("status"), reply.get("headers")
    try:
        body = base64.b64decode(str(reply.get("body") or ""), validate=True)
    except (binascii.Error, ValueError):
        body = None
    if not (isinstance(status, int) and 200 <= status <= 599 and isinstance(headers, dict)
            and body is not None):
        raise ApiError(502, "pack_route_error", f"the worker's answer for {path} is malformed")
    out = {str(k): str(v) for k, v in headers.items()
           if str(k) in RESPONSE_HEADERS and "\n" not in str(v) and "\r" not in str(v)}
    out["X-Content-Type-Options"] = "nosniff"
    return web.Response(status=status, body=body, headers=out)
