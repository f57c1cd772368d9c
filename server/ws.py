"""The websocket hub: clients by clientId, JSON events and binary preview frames.

Any thread may post; messages reach the event loop in batches (one
``call_soon_threadsafe`` per batch, not per message). Each batch is written
to a client as its frames concatenated in one ``transport.write``: at high
prompt rates one send per message was the server's largest cost. Frames are
plain RFC 6455 server frames (FIN, no mask, no compression, which is never
negotiated here), so they interleave safely with aiohttp's own control frames.
A client whose unsent data passes ``max_buffer`` is disconnected rather than
allowed to grow the server's memory without bound.

Privacy: a prompt's events go only to the client that submitted it (its
``client_id``); when that client is not connected they are dropped, never
broadcast. Events of prompts with no client id are broadcast, as in ComfyUI,
except on a server with a token (``private``), where they go to nobody.
Queue ``status`` messages carry no prompt data and always go to everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import threading
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from server.errors import ApiError, dumps

log = logging.getLogger(__name__)

PREVIEW_EVENT = 1  # ComfyUI's BinaryEventTypes.PREVIEW_IMAGE
JPEG_IMAGE = 1  # ComfyUI's image types in the frame's second uint32
PNG_IMAGE = 2
STATUS_INTERVAL = 0.05  # seconds: bursts of queue changes coalesce into one status
_STATUS = object()  # outbox marker: send the queue status to everyone
_TEXT, _BINARY = 0x1, 0x2


def preview_frame(data: bytes, image_type: int = JPEG_IMAGE) -> bytes:
    """ComfyUI's binary preview: big-endian uint32 event type, uint32 image type, bytes."""
    return struct.pack(">II", PREVIEW_EVENT, image_type) + data


def message(type_: str, data: dict[str, Any]) -> str:
    return dumps({"type": type_, "data": data})


def encode_frame(payload: str | bytes) -> bytes:
    """One unmasked, final websocket frame (text for str, binary for bytes)."""
    if isinstance(payload, str):
        data, opcode = payload.encode(), _TEXT
    else:
        data, opcode = payload, _BINARY
    n = len(data)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + data


class _Client:
    def __init__(self, sid: str, ws: web.WebSocketResponse, transport: asyncio.Transport,
                 max_buffer: int):
        self.sid = sid
        self.ws = ws
        self.transport = transport
        self.max_buffer = max_buffer
        self.frames: list[bytes] = []
        self.closed = False

    def queue(self, frame: bytes) -> None:
        if not self.closed:
            self.frames.append(frame)

    def flush(self) -> None:
        if self.closed or not self.frames:
            return
        data = b"".join(self.frames)
        self.frames.clear()
        if self.transport.is_closing():
            self.closed = True
            return
        self.transport.write(data)
        if self.transport.get_write_buffer_size() > self.max_buffer:
            log.warning("websocket client %s is not reading; disconnecting it", self.sid)
            self.closed = True
            self.transport.abort()

    async def close(self, message: bytes = b"") -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.close(code=WSCloseCode.GOING_AWAY, message=message)


class Hub:
    """Connected websocket clients and the thread-safe way to reach them."""

    def __init__(self, queue_remaining: Callable[[], int] = lambda: 0, *,
                 max_buffer: int = 16 << 20, private: bool = False):
        self.queue_remaining = queue_remaining
        self.max_buffer = max_buffer
        self.private = private
        self.clients: dict[str, _Client] = {}
        # Called with a new client's sid; returns messages to replay to it (e.g. the
        # node its prompt is executing), like ComfyUI does on reconnect.
        self.on_connect: Callable[[str], list[str]] = lambda sid: []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._outbox: list[tuple[str | None, Any]] = []
        self._status_pending = False
        self._status_timer: asyncio.TimerHandle | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def has_clients(self) -> bool:
        return bool(self.clients)

    # --- posting (any thread) --------------------------------------------------
    def post(self, sid: str | None, payload: str | bytes) -> None:
        """Send to ``sid`` (dropped if it is not connected); ``None``: to everyone,
        unless the hub is private."""
        self._enqueue(sid, payload)

    def post_event(self, sid: str | None, type_: str, data: dict[str, Any]) -> None:
        self._enqueue(sid, message(type_, data))

    def status_changed(self) -> None:
        """Broadcast ``status`` soon; changes within STATUS_INTERVAL share one message."""
        with self._lock:
            if self._status_pending:
                return
            self._status_pending = True
        self._enqueue(None, _STATUS)

    def _enqueue(self, sid: str | None, payload: Any) -> None:
        with self._lock:
            first = not self._outbox
            self._outbox.append((sid, payload))
        if first and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                self._loop.call_soon_threadsafe(self._flush)

    # --- delivery (event loop) -------------------------------------------------
    def _flush(self) -> None:
        with self._lock:
            batch, self._outbox = self._outbox, []
        touched: dict[int, _Client] = {}
        for sid, payload in batch:
            if payload is _STATUS:
                if self._status_timer is None:
                    self._status_timer = self._loop.call_later(  # type: ignore[union-attr]
                        STATUS_INTERVAL, self._send_status)
                continue
            if sid is not None:
                client = self.clients.get(sid)
                targets = [client] if client is not None else []
            else:
                targets = [] if self.private else list(self.clients.values())
            if not targets:
                continue
            frame = encode_frame(payload)
            for each in targets:
                each.queue(frame)
                touched[id(each)] = each
        for each in touched.values():
            each.flush()

    def _send_status(self) -> None:
        self._status_timer = None
        with self._lock:
            self._status_pending = False
        frame = encode_frame(self.status_message())
        for each in list(self.clients.values()):
            each.queue(frame)
            each.flush()

    def status_message(self, sid: str | None = None) -> str:
        data: dict[str, Any] = {"status": {"exec_info": {
            "queue_remaining": self.queue_remaining()}}}
        if sid is not None:
            data["sid"] = sid
        return message("status", data)

    # --- the /ws endpoint --------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        sid = request.query.get("clientId") or uuid.uuid4().hex
        if len(sid) > 200 or not sid.isprintable():
            raise ApiError(400, "invalid_client_id", "clientId must be at most 200 printable "
                           "characters")
        ws = web.WebSocketResponse(max_msg_size=1 << 20, compress=False, timeout=2.0)
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        # Like ComfyUI, a reconnect with the same clientId takes the name over.
        client = _Client(sid, ws, transport, self.max_buffer)  # type: ignore[arg-type]
        self.clients[sid] = client
        for text in [self.status_message(sid), *self.on_connect(sid)]:
            client.queue(encode_frame(text))
        client.flush()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break  # client messages (e.g. feature flags) are not needed
        except Exception:
            log.exception("websocket %s failed", sid)
        finally:
            if self.clients.get(sid) is client:
                del self.clients[sid]
            client.closed = True
        return ws

    async def close_all(self) -> None:
        if self._status_timer is not None:
            self._status_timer.cancel()
        clients, self.clients = list(self.clients.values()), {}
        await asyncio.gather(*(c.close(b"server shutdown") for c in clients))
