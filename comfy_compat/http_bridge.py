"""Node packs' HTTP routes, answered in the worker process (no torch imported here).

Packs register routes at import with ``@PromptServer.instance.routes.get("/my/route")``
(:mod:`comfy_compat.prompt_server`). They are imported where their nodes run, the
worker process; the HTTP server is another process that imports no torch. So the
worker reports the routes (:func:`registered_routes`, in its ``ready`` message), the
server forwards a request on one of those paths as an ``http`` message
(:mod:`server.pack_routes`), and :class:`HttpBridge` calls the pack's aiohttp handler
here with a real :class:`aiohttp.web.Request` built from the message (method, path,
query, match info, a few headers, the body) and sends back an ``http_reply``: status,
a few headers and the body (JSON, text or bytes, base64 on the channel).

Only GET and POST; a handler gets :data:`HANDLER_TIMEOUT` seconds; a streamed or file
response, a too-large body or a handler's exception becomes a 502 with the reason.
Handlers run on one event loop in a thread of their own, so a route answers while a
prompt runs (as in ComfyUI, where routes and the executor are separate threads).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

METHODS = ("GET", "POST")
HANDLER_TIMEOUT = 30.0
MAX_BODY = 16 * 1024 * 1024  # bytes, each way
#: headers that travel: what a handler reads to parse a body / what a client needs back
REQUEST_HEADERS = ("Content-Type", "Accept", "Accept-Language")
RESPONSE_HEADERS = ("Content-Type", "Cache-Control", "Content-Disposition",
                    "Content-Language")


def _route_defs() -> list[Any]:
    from aiohttp import web

    from comfy_compat.prompt_server import PromptServer

    return [r for r in PromptServer.instance.routes if isinstance(r, web.RouteDef)]


def registered_routes() -> list[list[str]]:
    """``[[method, path], ...]`` of the GET/POST routes packs registered; the others are
    logged once as not served."""
    routes, seen = [], set()
    for route in _route_defs():
        method = route.method.upper()
        if method not in METHODS:
            log.warning("node pack route %s %s is not served (only GET and POST are)",
                        method, route.path)
            continue
        if (method, route.path) not in seen:
            seen.add((method, route.path))
            routes.append([method, route.path])
    return routes


def reply(status: int, body: bytes = b"", content_type: str = "application/json",
          **headers: str) -> dict[str, Any]:
    """An ``http_reply``'s fields (less ``op`` and ``id``)."""
    return {"status": status, "headers": {"Content-Type": content_type, **headers},
            "body": base64.b64encode(body).decode()}


def error_reply(status: int, kind: str, message: str) -> dict[str, Any]:
    import json

    body = json.dumps({"error": {"type": kind, "message": message, "details": ""}})
    return reply(status, body.encode())


class HttpBridge:
    """Answers ``http`` messages with the packs' handlers; ``send`` posts the reply."""

    def __init__(self, send: Callable[[dict[str, Any]], None],
                 timeout: float = HANDLER_TIMEOUT):
        self.send = send
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self._router: Any = None
        threading.Thread(target=self.loop.run_forever, name="steerflow-pack-routes",
                         daemon=True).start()

    def submit(self, message: dict[str, Any]) -> None:
        """Answer ``message`` (from any thread); the reply goes out through ``send``."""
        asyncio.run_coroutine_threadsafe(self._answer(message), self.loop)

    async def _answer(self, message: dict[str, Any]) -> None:
        try:
            fields = await self.handle(message)
        except Exception as exc:  # the bridge must answer whatever happens
            log.exception("pack route %s failed", message.get("path"))
            fields = error_reply(502, "pack_route_error", f"{type(exc).__name__}: {exc}")
        try:
            self.send({"op": "http_reply", "id": message.get("id"), **fields})
        except (OSError, ValueError):
            log.debug("cannot send an http reply (the channel closed)")

    def router(self) -> Any:
        if self._router is None:
            from aiohttp import web

            router = web.UrlDispatcher()
            for route in _route_defs():
                if route.method.upper() in METHODS:
                    router.add_route(route.method.upper(), route.path, route.handler)
            self._router = router
        return self._router

    async def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        """The reply fields for one request message."""
        from aiohttp import web
        from aiohttp.test_utils import make_mocked_request
        from multidict import CIMultiDict
        from yarl import URL

        method = str(message.get("method", "")).upper()
        path = str(message.get("path", ""))
        if method not in METHODS or not path.startswith("/"):
            return error_reply(400, "bad_request", "only GET and POST on absolute paths")
        body = base64.b64decode(str(message.get("body") or ""))
        if len(body) > MAX_BODY:
            return error_reply(413, "too_large", f"bodies are limited to {MAX_BODY} bytes")
        url = URL.build(path=path, query=[(str(k), str(v)) for k, v in message.get("query", [])])
        given = message.get("headers") if isinstance(message.get("headers"), dict) else {}
        headers = CIMultiDict({k: str(given[k]) for k in REQUEST_HEADERS if k in given})
        headers["Host"] = "127.0.0.1"
        probe = make_mocked_request(method, str(url), headers=headers, loop=self.loop)
        match = await self.router().resolve(probe)
        if match.http_exception is not None:
            status = match.http_exception.status
            return error_reply(status, "not_found" if status == 404 else "method_not_allowed",
                               f"no pack route {method} {path}")
        request = make_mocked_request(method, str(url), headers=headers, match_info=dict(match),
                                      payload=_payload(body, self.loop), loop=self.loop,
                                      client_max_size=MAX_BODY)
        try:
            response = await asyncio.wait_for(match.handler(request), self.timeout)
        except web.HTTPException as exc:  # raised as ComfyUI handlers do: a normal answer
            response = exc
        except TimeoutError:
            return error_reply(504, "pack_route_timeout",
                               f"the pack's handler for {path} took over {self.timeout:.0f} s")
        return _fields(response, path)


def _payload(body: bytes, loop: asyncio.AbstractEventLoop) -> Any:
    from unittest import mock

    from aiohttp.streams import StreamReader

    stream = StreamReader(mock.Mock(_reading_paused=False), 2 ** 16, loop=loop)
    if body:
        stream.feed_data(body)
    stream.feed_eof()
    return stream


def _fields(response: Any, path: str) -> dict[str, Any]:
    from aiohttp import web

    if not isinstance(response, web.Response):  # FileResponse, WebSocketResponse, ...
        return error_reply(502, "pack_route_error", f"the pack's handler for {path} returned "
                           f"{type(response).__name__}; only plain responses are forwarded")
    body = response.body
    if body is None:
        body = b""
    elif not isinstance(body, bytes | bytearray):  # a Payload object
        return error_reply(502, "pack_route_error", f"the pack's handler for {path} returned "
                           "a streamed body; only bytes, text and JSON are forwarded")
    if len(body) > MAX_BODY:
        return error_reply(502, "pack_route_error", f"the pack's answer for {path} is over "
                           f"{MAX_BODY} bytes")
    headers = {k: response.headers[k] for k in RESPONSE_HEADERS if k in response.headers}
    return {"status": int(response.status), "headers": headers,
            "body": base64.b64encode(bytes(body)).decode()}
