"""Node packs' HTTP routes, served by forwarding to the worker process.

ComfyUI packs register routes at import (``@PromptServer.instance.routes.get(...)``).
Their handlers belong with their nodes, in the worker process (which imports torch);
this process never calls them. The worker reports the GET/POST routes packs
registered in its ``ready`` message (``pack_routes``: ``[[method, path], ...]``, see
:mod:`comfy_compat.http_bridge`). :func:`pack_routes_middleware` answers a request
whose path matches one of them (also under ``/api``, as ComfyUI serves every route)
and that no route of ours claims — the web app's catch-all file route aside: it
sends the request over the worker channel (:meth:`server.worker.Channel.http`) and
returns the handler's status, a few headers and the body.

The security middleware runs first (Host, Origin, token: a pack route is never
public); bodies are bounded (:data:`MAX_BODY`), the worker gets :data:`TIMEOUT`
seconds, and a failure is a structured 502 (504 on timeout, 503 without a worker).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from aiohttp import web

from server.errors import ApiError, Handler
from server.worker import WorkerDied

MAX_BODY = 8 * 1024 * 1024  # request bytes forwarded
TIMEOUT = 40.0  # seconds; the worker's handler gets 30 of them
API_PREFIX = "/api"
_CATCH_ALL = "canvas-static"
_MATCH = web.RequestKey("steerflow_pack_route", bool)  # resolved once per request
# The reported routes and their router, rebuilt when a worker reports others (keyed by
# the routes themselves, so servers sharing a process in tests get theirs).
_routers: dict[tuple[tuple[str, str], ...], web.UrlDispatcher] = {}


def _reported(app: web.Application) -> tuple[tuple[str, str], ...]:
    from server.state import STATE

    state = app.get(STATE)
    routes = state.runtime.worker_info.get("pack_routes") if state is not None else None
    if not isinstance(routes, list):
        return ()
    return tuple((str(r[0]).upper(), str(r[1])) for r in routes
                 if isinstance(r, list) and len(r) == 2 and str(r[0]).upper() in ("GET", "POST")
                 and isinstance(r[1], str) and r[1].startswith("/"))


def _router(app: web.Application) -> web.UrlDispatcher | None:
    """A router of the reported routes (rebuilt when a worker reports others)."""
    routes = _reported(app)
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
    """Whether ``request`` goes to a node pack's route (cached on the request)."""
    if _MATCH not in request:
        found = False
        if _unclaimed(request):
            router = _router(request.app)
            if router is not None:
                match = await router.resolve(request)
                found = match.http_exception is None
        request[_MATCH] = found
    return request[_MATCH]


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
    worker = state(request).runtime.worker
    if worker is None or not worker.alive():
        raise ApiError(503, "worker_unavailable", "the worker process that serves node "
                       "packs' routes is not running; try again shortly")
    path = request.path
    if path.startswith(API_PREFIX + "/"):
        path = path[len(API_PREFIX):]
    message = {"op": "http", "method": request.method, "path": path,
               "query": [[k, v] for k, v in request.query.items()],
               "headers": {k: request.headers[k] for k in ("Content-Type", "Accept",
                                                           "Accept-Language")
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
           if str(k) in ("Content-Type", "Cache-Control", "Content-Disposition",
                         "Content-Language") and "\n" not in str(v) and "\r" not in str(v)}
    out["X-Content-Type-Options"] = "nosniff"
    return web.Response(status=status, body=body, headers=out)
