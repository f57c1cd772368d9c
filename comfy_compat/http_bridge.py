"""Node packs' HTTP routes, answered in the worker process (no torch imported here).

Packs register routes at import with ``@PromptServer.instance.routes.get("/my/route")``
(:mod:`comfy_compat.prompt_server`). They are imported where their nodes run, the
worker process; the HTTP server is another process that imports no torch. So the
worker reports the routes (:func:`registered_routes`, in its ``ready`` message), the
server forwards a request on one of those paths as an ``http`` message
(:mod:`server.pack_routes`), and :class:`HttpBridge` calls the pack's aiohttp handler
here with a real :class:`aiohttp.web.Request` built from the message (method, path,
query, match info, a few headers, the body) and sends back an ``http_reply``: status,
a few headers and the body (base64 on the channel).

The path arrives still percent-encoded and is matched that way, as aiohttp matches
(``rel_url.path_safe``): ``/pysssss/view/loras%2Fx.safetensors`` matches
``/pysssss/view/{name}`` with ``name`` = ``loras/x.safetensors``, as in ComfyUI.

A plain ``web.Response`` travels as its body (JSON, text or bytes). Any other answer
(``web.FileResponse``, a ``web.StreamResponse`` the handler prepared and wrote, a
``Response`` with a payload body) is rendered by aiohttp itself against a writer that
collects what would go on the wire (:class:`_Collector`): a ``FileResponse`` reads the
file its handler named (the pack's own path, as in ComfyUI; nothing here resolves a
client's path), with aiohttp's content type for the suffix, its ``ETag``,
``Last-Modified``, 304 for ``If-None-Match``/``If-Modified-Since``, 206 for ``Range``
and 404/403 for a missing or special file. Bodies are bounded by :data:`MAX_BODY` (a
larger one is a 502); a websocket answer is a 502.

Only GET and POST; a handler gets :data:`HANDLER_TIMEOUT` seconds (rendering its answer
included); a too-large body or a handler's exception becomes a 502 with the reason.
Handlers run on one event loop in a thread of their own, so a route answers while a
prompt runs (as in ComfyUI, where routes and the executor are separate threads).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from typing import Any

from aiohttp.abc import AbstractStreamWriter

log = logging.getLogger(__name__)

METHODS = ("GET", "POST")
HANDLER_TIMEOUT = 30.0
MAX_BODY = 16 * 1024 * 1024  # bytes, each way
#: headers that travel: what a handler reads to parse a body (and what a file answer
#: needs for conditional and range requests) / what a client needs back
REQUEST_HEADERS = ("Content-Type", "Accept", "Accept-Language", "If-None-Match",
                   "If-Modified-Since", "Range", "If-Range")
RESPONSE_HEADERS = ("Content-Type", "Cache-Control", "Content-Disposition",
                    "Content-Language", "ETag", "Last-Modified", "Accept-Ranges",
                    "Content-Range", "Location")


def _route_defs() -> list[Any]:
    from aiohttp import web

    from comfy_compat.prompt_server import PromptServer

    return [r for r in PromptServer.instance.routes if isinstance(r, web.RouteDef)]


def known_routes() -> list[list[str]]:
    """``[[method, path], ...]`` of the GET/POST routes packs registered in this process,
    nothing logged (the server asks while its worker starts: :mod:`server.pack_routes`)."""
    return [[r.method.upper(), r.path] for r in _route_defs() if r.method.upper() in METHODS]


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
        from comfy_compat.prompt_server import PromptServer

        self.loop = PromptServer.instance.loop
        self._router: Any = None

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
            # a pack imported again in this process (a second registry) registers its
            # routes again: the last registration answers, as its module is the current one
            latest = {(r.method.upper(), r.path): r.handler for r in _route_defs()
                      if r.method.upper() in METHODS}
            for (method, path), handler in latest.items():
                router.add_route(method, path, handler)
            self._router = router
        return self._router

    async def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        """The reply fields for one request message."""
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
        # still percent-encoded: parsed as is, so an encoded slash stays one (aiohttp matches
        # on rel_url.path_safe and decodes each match_info value)
        url = URL(path).with_query([(str(k), str(v)) for k, v in message.get("query", [])])
        given = message.get("headers") if isinstance(message.get("headers"), dict) else {}
        headers = CIMultiDict({k: str(given[k]) for k in REQUEST_HEADERS if k in given})
        headers["Host"] = "127.0.0.1"
        probe = make_mocked_request(method, str(url), headers=headers, loop=self.loop)
        match = await self.router().resolve(probe)
        if match.http_exception is not None:
            status = match.http_exception.status
            return error_reply(status, "not_found" if status == 404 else "method_not_allowed",
                               f"no pack route {method} {path}")
        collector = _Collector(MAX_BODY)
        request = make_mocked_request(method, str(url), headers=headers, match_info=dict(match),
                                      payload=_payload(body, self.loop), loop=self.loop,
                                      client_max_size=MAX_BODY, writer=collector)
        try:
            return await asyncio.wait_for(self._respond(match.handler, request, collector, path),
                                          self.timeout)
        except TimeoutError:
            return error_reply(504, "pack_route_timeout",
                               f"the pack's handler for {path} took over {self.timeout:.0f} s")
        except _TooLarge:
            return _too_large(path)

    async def _respond(self, handler: Any, request: Any, collector: _Collector,
                       path: str) -> dict[str, Any]:
        """Call ``handler``; its answer as reply fields (rendered if not a plain body)."""
        from aiohttp import web

        try:
            response = await handler(request)
        except web.HTTPException as exc:  # raised as ComfyUI handlers do: a normal answer
            response = exc
        if isinstance(response, web.Response) and not response.prepared and \
                isinstance(response.body, bytes | bytearray | None):
            return _fields(response, path)
        if isinstance(response, web.WebSocketResponse) or \
                not isinstance(response, web.StreamResponse):
            return error_reply(502, "pack_route_error", f"the pack's handler for {path} "
                               f"returned {type(response).__name__}, which is not forwarded")
        return await _rendered(response, request, collector)


def _payload(body: bytes, loop: asyncio.AbstractEventLoop) -> Any:
    from unittest import mock

    from aiohttp.streams import StreamReader

    stream = StreamReader(mock.Mock(_reading_paused=False), 2 ** 16, loop=loop)
    if body:
        stream.feed_data(body)
    stream.feed_eof()
    return stream


def _too_large(path: str) -> dict[str, Any]:
    return error_reply(502, "pack_route_error", f"the pack's answer for {path} is over "
                       f"{MAX_BODY} bytes")


def _fields(response: Any, path: str) -> dict[str, Any]:
    """A plain ``web.Response``'s reply fields (its bytes as they are)."""
    body = bytes(response.body or b"")
    if len(body) > MAX_BODY:
        return _too_large(path)
    headers = {k: response.headers[k] for k in RESPONSE_HEADERS if k in response.headers}
    return {"status": int(response.status), "headers": headers,
            "body": base64.b64encode(body).decode()}


async def _rendered(response: Any, request: Any, collector: _Collector) -> dict[str, Any]:
    """Let aiohttp write ``response`` (a file, a stream, a payload) into ``collector``."""
    from aiohttp import web

    if not response.prepared:
        if isinstance(response, web.FileResponse) and not response.compression:
            # aiohttp sends a file with the loop's sendfile() on the socket; with
            # compression enabled it reads it in chunks through the writer instead. No
            # Accept-Encoding reaches this request, so nothing is actually compressed.
            response.enable_compression()
        await response.prepare(request)  # status, headers: a file's type, ETag, 304, ...
    await response.write_eof()
    headers = {k: response.headers[k] for k in RESPONSE_HEADERS if k in response.headers}
    return {"status": int(response.status), "headers": headers,
            "body": base64.b64encode(b"".join(collector.chunks)).decode()}


class _TooLarge(Exception):
    """An answer over :data:`MAX_BODY` bytes (writing it stops there)."""


class _Collector(AbstractStreamWriter):
    """The writer a pack's request writes its answer to: keeps the body's bytes (up to
    ``limit``); headers are read from the response, nothing goes to a socket. Chunked
    framing and compression are the real writer's, so the bytes here are the plain body
    (a response that forced compression travels uncompressed, without its
    Content-Encoding)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.chunks: list[bytes] = []

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        self.output_size += len(chunk)
        if self.output_size > self.limit:
            raise _TooLarge()
        self.chunks.append(bytes(chunk))

    async def write_eof(self, chunk: bytes = b"") -> None:
        if chunk:
            await self.write(chunk)

    async def drain(self) -> None:
        return None

    def enable_compression(self, encoding: str = "deflate",
                           strategy: int | None = None) -> None:
        return None

    def enable_chunking(self) -> None:
        return None

    async def write_headers(self, status_line: str, headers: Any) -> None:
        return None
