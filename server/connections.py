"""Connection limits aiohttp lacks: header and body read timeouts, a cap on waiting ones.

aiohttp (pinned 3.14.5) reads a request head for as long as the client likes: only its
keep-alive timer (75 s under ``run_app``) ever closes a connection that has not sent a
whole head, and a handler waiting on a request body waits forever. About a thousand
clients that send ``GET / HTTP/1.1\\r\\nHost: x\\r\\n`` and stop (slowloris) then hold every
file descriptor of the usual 1024 the process may open, and the server stops accepting
anyone — before any token check, since nothing was read. It has no option for either timeout.

:class:`ConnectionGuard` wraps the protocol factory (the runner's ``web.Server``) that
:func:`listen` gives the listening socket: each connection's protocol is a thin
:class:`_Guarded` proxy forwarding every call to aiohttp's own ``RequestHandler`` and
noting when bytes arrive. A sweep every fraction of a second then

* closes a connection whose request head is not complete ``header_timeout`` after it
  began (a new connection's at once, a keep-alive one's at its next first byte),
  with a 408 if the client had sent anything;
* fails a body read that has been waiting ``body_timeout`` with no byte arriving (an
  idle timeout: a slow upload that keeps sending is never cut) with a 408 ``ApiError``,
  and ends the connection after that reply;

and each new connection past ``max_pending`` connections waiting for a request head
(idle keep-alive ones included) closes the oldest of those. A request aiohttp cannot
parse (a request line or header over its 8190 bytes, a bad header) never reaches the
app's middlewares: :class:`_JsonErrors` answers it with the structured JSON error
instead of aiohttp's plain text. A request being handled
is never touched otherwise: a websocket's handler runs for the whole connection, so
neither timer applies after the upgrade. aiohttp's keep-alive timer still closes idle
keep-alive connections.

The proxy reads a few of ``RequestHandler``'s private fields (:class:`_Guarded`'s
properties); the pinned aiohttp version keeps them stable, and tests/server/
test_connections.py exercises each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from server.errors import ApiError, dumps, error_body

log = logging.getLogger(__name__)

KEEPALIVE_TIMEOUT = 75.0  # run_app's default; a bare AppRunner's handlers would wait 3630 s
LOG_EVERY = 10.0  # seconds between the summary lines of closed connections (a flood is one)


@dataclass(frozen=True)
class ConnectionLimits:
    """``header_timeout``: seconds from a connection's start (or a keep-alive one's first
    byte of its next request) to a complete request head; ``body_timeout``: seconds a
    handler may wait on its request body with nothing arriving; ``max_pending``:
    connections waiting for a request head (the oldest go first past it)."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_pending: int = 256

    def bounded_by_fd_limit(self) -> ConnectionLimits:
        """At most a quarter of the process's descriptors may wait for headers: the rest
        stay for established clients, the database and the workers' pipes."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft // 4 >= self.max_pending:
            return self
        return ConnectionLimits(self.header_timeout, self.body_timeout, max(16, soft // 4))


def _timeout_reply(message: str) -> bytes:
    body = dumps({"error": error_body("request_timeout", message)}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
            b"Content-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


class _JsonErrors(RequestHandler):
    """aiohttp's handler, its own error replies (unparsable requests, before any
    middleware runs) as the project's structured JSON."""

    __slots__ = ()

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if sent already
        if isinstance(exc, LineTooLong):
            limit = exc.args[1] if len(exc.args) > 1 else "its limit of"
            type_, text = "request_too_long", ("the request line or a header is longer "
                                               f"than the server's limit ({limit} bytes)")
        elif isinstance(exc, HttpProcessingError) and 400 <= status < 500:
            type_, text = "bad_request", f"malformed HTTP request: {exc.message[:200]}"
        else:
            type_, text = "internal_error", "internal server error; see the server log"
        response = web.Response(status=status, text=dumps({"error": error_body(type_, text)}),
                                content_type="application/json")
        response.force_close()
        return response


def _handler(server: web.Server) -> RequestHandler:
    """What ``server()`` makes, as :class:`_JsonErrors` (its private ``_loop`` and
    ``_kwargs``: the handler's arguments, see the module docstring)."""
    return _JsonErrors(server, loop=server._loop, **server._kwargs)


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's handler, and when its current request head began."""

    def __init__(self, guard: ConnectionGuard, handler: RequestHandler):
        self.guard = guard
        self.handler = handler
        self.since = self.last_data = time.monotonic()
        self.head_started = False  # bytes of a request head have arrived since the last one
        self.served = False  # a whole request head has arrived on this connection
        self.body: StreamReader | None = None  # the body of the last request head
        self.body_wait_since: float | None = None
        self.closing = False

    # -- aiohttp's RequestHandler state (private fields, see the module docstring) --------
    @property
    def awaiting_request(self) -> bool:
        """No request is being handled nor queued: the connection waits for a head."""
        h = self.handler
        return not h._request_in_progress and not h._messages

    def waiting_body(self) -> StreamReader | None:
        """The request body a handler is waiting on, with nothing left to read, else None."""
        body = self.body
        return body if body is not None and not body.is_eof() and body._waiter else None

    # -- the protocol, forwarded -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.handler.connection_made(transport)
        self.guard.opened(self)

    def data_received(self, data: bytes) -> None:
        h = self.handler
        now = self.last_data = time.monotonic()
        # Bytes after a complete body (or the first ones) begin the next request head.
        if data and not self.head_started and (self.body is None or self.body.is_eof()):
            self.head_started = True
            if self.served:  # a keep-alive connection: its head's clock starts now
                self.since = now
        heads = h._request_count
        h.data_received(data)
        if h._request_count != heads:
            self.head_started, self.served, self.since = False, True, now
            self.body = h._messages[-1][1] if h._messages else None

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.lost(self)
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    # -- closing -----------------------------------------------------------------------
    def in_head(self) -> bool:
        """Waiting for a request head it has begun (or, new, has yet to begin)."""
        return (self.head_started or not self.served) and self.awaiting_request

    def close(self, reply: bytes = b"") -> None:
        self.closing = True
        transport = self.handler.transport
        if reply and transport is not None and not transport.is_closing():
            transport.write(reply)  # close() below still sends it
        self.handler.force_close()


class ConnectionGuard:
    """The connections of one listening socket, and the sweep that enforces the limits."""

    def __init__(self, limits: ConnectionLimits):
        self.limits = limits
        self.connections: dict[_Guarded, None] = {}  # insertion-ordered set
        self._sweeper: asyncio.Task[None] | None = None
        self._counts = {"header": 0, "body": 0, "dropped": 0}
        self._logged = 0.0

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guarded(self, _handler(server))

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    def opened(self, conn: _Guarded) -> None:
        self.connections[conn] = None
        if len(self.connections) > self.limits.max_pending:
            self._drop_oldest_waiting()

    def lost(self, conn: _Guarded) -> None:
        self.connections.pop(conn, None)

    def _drop_oldest_waiting(self) -> None:
        waiting = [c for c in self.connections if not c.closing and c.awaiting_request]
        extra = len(waiting) - self.limits.max_pending
        if extra > 0:
            for conn in sorted(waiting, key=lambda c: c.since)[:extra]:
                conn.close()
            self._counts["dropped"] += extra

    async def _sweep_forever(self) -> None:
        lim = self.limits
        every = max(0.05, min(1.0, lim.header_timeout / 4, lim.body_timeout / 4))
        while True:
            await asyncio.sleep(every)
            try:
                self.sweep(time.monotonic())
            except Exception:  # a bug here must not end the sweeping
                log.exception("connection sweep failed")

    def sweep(self, now: float) -> None:
        lim = self.limits
        for conn in list(self.connections):
            if conn.closing:
                continue
            if conn.in_head():
                if now - conn.since > lim.header_timeout:
                    reply = _timeout_reply(f"the request headers did not arrive within "
                                           f"{lim.header_timeout:g} s")
                    conn.close(reply if conn.head_started else b"")
                    # a browser's unused preconnected socket is no event worth a line
                    self._counts["header"] += conn.head_started
                continue
            payload = conn.waiting_body()
            if payload is None:
                conn.body_wait_since = None
                continue
            if conn.body_wait_since is None:
                conn.body_wait_since = now  # a handler busy before reading is no idle client
            if now - max(conn.last_data, conn.body_wait_since) > lim.body_timeout:
                self._fail_body(conn, payload)
        self._log_summary(now)

    def _fail_body(self, conn: _Guarded, payload: StreamReader) -> None:
        conn.closing = True
        conn.handler.close()  # no more bytes read: the connection ends after the reply
        payload.set_exception(ApiError(
            408, "request_timeout", f"the request body stopped arriving: nothing for "
            f"{self.limits.body_timeout:g} s"))
        payload.feed_eof()  # so aiohttp does not wait out the rest of the body
        self._counts["body"] += 1

    def _log_summary(self, now: float) -> None:
        if not any(self._counts.values()) or now - self._logged < LOG_EVERY:
            return
        c, lim = self._counts, self.limits
        parts = [f"{c['header']} whose request headers took over {lim.header_timeout:g} s"
                 if c["header"] else "",
                 f"{c['body']} whose request body stalled for {lim.body_timeout:g} s"
                 if c["body"] else "",
                 f"{c['dropped']} oldest of over {lim.max_pending} waiting for headers"
                 if c["dropped"] else ""]
        log.warning("closed connections: %s", "; ".join(p for p in parts if p))
        self._counts = dict.fromkeys(c, 0)
        self._logged = now


async def listen(runner: web.AppRunner, host: str, port: int, limits: ConnectionLimits,
                 *, backlog: int = 128) -> tuple[asyncio.AbstractServer, ConnectionGuard]:
    """Serve ``runner`` (set up) on ``host:port`` through a :class:`ConnectionGuard`; what
    ``web.TCPSite`` does, with the guarded protocol factory."""
    assert runner.server is not None, "runner.setup() first"
    guard = ConnectionGuard(limits)
    server = await asyncio.get_running_loop().create_server(
        guard.protocol_factory(runner.server), host, port, backlog=backlog)
    guard.start()
    return server, guard


def run_app(app: web.Application, *, host: str, port: int, limits: ConnectionLimits,
            print: Callable[[str], None], **runner_kwargs: Any) -> None:
    """``web.run_app``'s life cycle (SIGINT/SIGTERM end it gracefully, the app's shutdown
    hooks run), serving through :func:`listen`."""
    loop = asyncio.new_event_loop()
    main = loop.create_task(_serve(app, host, port, limits, print, runner_kwargs))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()


async def _serve(app: web.Application, host: str, port: int, limits: ConnectionLimits,
                 print: Callable[[str], None], runner_kwargs: dict[str, Any]) -> None:
    runner = web.AppRunner(app, handle_signals=True, keepalive_timeout=KEEPALIVE_TIMEOUT,
                           **runner_kwargs)
    await runner.setup()
    server: asyncio.AbstractServer | None = None
    guard: ConnectionGuard | None = None
    try:
        server, guard = await listen(runner, host, port, limits.bounded_by_fd_limit())
        print(f"listening on {host}:{port}")
        await asyncio.Event().wait()  # until cancelled (a signal, Ctrl-C)
    finally:
        if guard is not None:
            await guard.stop()
        if server is not None:
            server.close()
        await runner.cleanup()
