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

A client may announce ComfyUI's feature flags (its frontend's first message,
``{"type": "feature_flags", "data": {...}}``); the hub answers with the server's and
then also sends it what such clients expect: ``progress_state`` messages
(:meth:`Hub.post_modern`) and previews with their node (:meth:`Hub.post_preview`:
type 4 frames to a client with ``supports_preview_metadata``, else type 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from server.errors import ApiError, dumps

log = logging.getLogger(__name__)

PREVIEW_EVENT = 1  # ComfyUI's BinaryEventTypes.PREVIEW_IMAGE
PREVIEW_WITH_METADATA_EVENT = 4  # ComfyUI's PREVIEW_IMAGE_WITH_METADATA
MIME_TYPES = {1: "image/jpeg", 2: "image/png"}
MAX_CLIENT_MESSAGE = 64 << 10  # client text messages longer than this are ignored
JPEG_IMAGE = 1  # ComfyUI's image types in the frame's second uint32
PNG_IMAGE = 2
STATE_INTERVAL = 0.05  # least seconds between two state messages of a key (post_state)
_TEXT, _BINARY = 0x1, 0x2


def preview_frame(data: bytes, image_type: int = JPEG_IMAGE) -> bytes:
    """ComfyUI's binary preview: big-endian uint32 event type, uint32 image type, bytes."""
    return struct.pack(">II", PREVIEW_EVENT, image_type) + data


def preview_metadata_frame(data: bytes, image_type: int, metadata: dict[str, Any]) -> bytes:
    """ComfyUI's type 4 preview: uint32 4, uint32 length of the JSON metadata (node,
    prompt, ``image_type`` as a MIME type), the metadata, the image bytes."""
    meta = dumps({**metadata, "image_type": MIME_TYPES.get(image_type, "image/jpeg")}).encode()
    return struct.pack(">II", PREVIEW_WITH_METADATA_EVENT, len(meta)) + meta + data


class _Modern:
    """An outbox payload only for clients that announced feature flags."""

    __slots__ = ("payload",)

    def __init__(self, payload: str):
        self.payload = payload


class _State:
    """A modern client's state message (``progress_state``) under a key: only the latest
    goes out, built when it is sent, at most one per ``interval`` (a trailing one carries
    the changes in between); ``final`` sends at once and forgets the key. Building and
    sending the whole state on every change was quadratic in the graph's size."""

    __slots__ = ("build", "final", "interval", "queued", "sent_at", "sid", "timer")

    def __init__(self, sid: str | None, build: Callable[[], str], interval: float):
        self.sid, self.build, self.interval = sid, build, interval
        self.final = False
        self.queued = False  # a marker for it is in the outbox
        self.sent_at = float("-inf")
        self.timer: asyncio.TimerHandle | None = None


class _Status:
    """An outbox status for everyone: the queue's length when it changed."""

    __slots__ = ("remaining",)

    def __init__(self, remaining: int):
        self.remaining = remaining


class _StateMark:
    __slots__ = ("key",)

    def __init__(self, key: str):
        self.key = key


class _Preview:
    """An outbox preview, framed per client (with or without its metadata)."""

    __slots__ = ("data", "image_type", "metadata")

    def __init__(self, data: bytes, image_type: int, metadata: dict[str, Any]):
        self.data, self.image_type, self.metadata = data, image_type, metadata


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
        self.features: dict[str, Any] | None = None  # ComfyUI's client feature flags

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
        # Held while a status reads the count and takes its place in the outbox (the
        # queue's own lock, which its changes hold): statuses go out in the order of the
        # counts they carry, so the last one sent is the queue as it is.
        self.queue_lock: Any = threading.RLock()
        self.max_buffer = max_buffer
        self.private = private
        self.clients: dict[str, _Client] = {}
        # Called with a new client's sid; returns messages to replay to it (e.g. the
        # node its prompt is executing), like ComfyUI does on reconnect.
        self.on_connect: Callable[[str], list[str]] = lambda sid: []
        # The server's feature flags, sent to a client that announces its own.
        self.server_features: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._outbox: list[tuple[str | None, Any]] = []
        self._status_defer = 0  # status_deferred blocks open
        self._status_due = False  # a change inside them, to broadcast when they end
        self._states: dict[str, _State] = {}

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

    def post_modern(self, sid: str | None, payload: str) -> None:
        """Like :meth:`post`, only to clients that announced feature flags."""
        self._enqueue(sid, _Modern(payload))

    def post_state(self, sid: str | None, key: str, build: Callable[[], str], *,
                   interval: float = STATE_INTERVAL, final: bool = False) -> None:
        """Like :meth:`post_modern` for a message that restates a whole state: ``build``
        runs on the event loop when the message is sent (so it must be thread-safe),
        only if a client will get it, and at most once per ``interval`` seconds for
        ``key``; ``final`` sends it in order now and ends the key."""
        with self._lock:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = _State(sid, build, interval)
            state.build, state.interval = build, interval
            state.final = state.final or final
            if state.queued:
                return
            state.queued = True
        self._enqueue(sid, _StateMark(key))

    def post_preview(self, sid: str | None, data: bytes, image_type: int,
                     metadata: dict[str, Any]) -> None:
        """A latent preview; ``metadata`` (``node_id``, ``prompt_id``, ...) goes only to
        clients with ``supports_preview_metadata``."""
        self._enqueue(sid, _Preview(data, image_type, metadata))

    @contextlib.contextmanager
    def status_deferred(self) -> Iterator[None]:
        """Queue changes inside the block broadcast their ``status`` when it ends, after
        what the block posted (a prompt's end: ComfyUI sends ``execution_success``, then
        the status, then ``executing`` None)."""
        with self._lock:
            self._status_defer += 1
        try:
            yield
        finally:
            with self._lock:
                self._status_defer -= 1
                due = not self._status_defer and self._status_due
                if due:
                    self._status_due = False
            if due:
                self._post_status()

    def status_changed(self) -> None:
        """Broadcast ``status`` in order with the events around it, as ComfyUI does on
        every queue change (a prompt's comes as it is queued, before its
        ``execution_start``). The count is read now, not when sent: a client must not
        see a prompt's end in the status that announces it. Status messages next to
        each other in one batch go out as the last of them."""
        with self._lock:
            if self._status_defer:
                self._status_due = True
                return
        self._post_status()

    def _post_status(self) -> None:
        # lock order: the queue's, then the hub's (in _enqueue), as the queue's changes
        with self.queue_lock:
            self._enqueue(None, _Status(self.queue_remaining()))

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
        for index, (sid, payload) in enumerate(batch):
            if isinstance(payload, _Status):
                if index + 1 < len(batch) and isinstance(batch[index + 1][1], _Status):
                    continue  # the next one is newer
                frame = encode_frame(self.status_message(remaining=payload.remaining))
                for each in self.clients.values():
                    each.queue(frame)
                    touched[id(each)] = each
                continue
            if isinstance(payload, _StateMark):
                self._flush_state(payload.key, touched)
                continue
            targets = self._targets(sid)
            if isinstance(payload, _Modern):
                targets = [t for t in targets if t.features is not None]
                payload = payload.payload
            if not targets:
                continue
            if isinstance(payload, _Preview):
                frames = {flag: encode_frame(
                    preview_metadata_frame(payload.data, payload.image_type, payload.metadata)
                    if flag else preview_frame(payload.data, payload.image_type))
                    for flag in {_wants_metadata(t) for t in targets}}
                for each in targets:
                    each.queue(frames[_wants_metadata(each)])
                    touched[id(each)] = each
                continue
            frame = encode_frame(payload)
            for each in targets:
                each.queue(frame)
                touched[id(each)] = each
        for each in touched.values():
            each.flush()

    def _targets(self, sid: str | None) -> list[_Client]:
        if sid is not None:
            client = self.clients.get(sid)
            return [client] if client is not None else []
        return [] if self.private else list(self.clients.values())

    def _flush_state(self, key: str, touched: dict[int, _Client] | None) -> None:
        now = self._loop.time()  # type: ignore[union-attr]
        with self._lock:
            state = self._states.get(key)
            if state is None:
                return
            state.queued = False
            final = state.final
            if final:
                del self._states[key]
        if state.timer is not None:
            if not final:
                return  # the trailing send carries this change
            state.timer.cancel()
            state.timer = None
        wait = state.sent_at + state.interval - now
        if wait > 0 and not final:
            state.timer = self._loop.call_later(  # type: ignore[union-attr]
                wait, self._send_state, key)
            return
        state.sent_at = now
        targets = [t for t in self._targets(state.sid) if t.features is not None]
        if not targets:
            return
        frame = encode_frame(state.build())
        for each in targets:
            each.queue(frame)
            if touched is None:
                each.flush()
            else:
                touched[id(each)] = each

    def _send_state(self, key: str) -> None:
        state = self._states.get(key)
        if state is None:
            return
        state.timer = None
        with self._lock:
            if state.queued:
                return  # a marker in the outbox will send it, in order
        state.sent_at = float("-inf")
        self._flush_state(key, None)

    def status_message(self, sid: str | None = None, remaining: int | None = None) -> str:
        if remaining is None:
            remaining = self.queue_remaining()
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": remaining}}}
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
                    break
                if msg.type == WSMsgType.TEXT:
                    self._client_message(client, msg.data)
        except Exception:
            log.exception("websocket %s failed", sid)
        finally:
            if self.clients.get(sid) is client:
                del self.clients[sid]
            client.closed = True
        return ws

    def _client_message(self, client: _Client, text: str) -> None:
        """ComfyUI's ``feature_flags`` announcement; other client messages are ignored."""
        if len(text) > MAX_CLIENT_MESSAGE:
            return
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):  # deep nesting: no traceback in the log
            return
        if isinstance(msg, dict) and msg.get("type") == "feature_flags" \
                and isinstance(msg.get("data"), dict):
            client.features = msg["data"]
            client.queue(encode_frame(message("feature_flags", self.server_features)))
            client.flush()

    async def close_all(self) -> None:
        for state in list(self._states.values()):
            if state.timer is not None:  # a trailing state send due: nobody to get it
                state.timer.cancel()
        clients, self.clients = list(self.clients.values()), {}
        await asyncio.gather(*(c.close(b"server shutdown") for c in clients))


def _wants_metadata(client: _Client) -> bool:
    return bool(client.features and client.features.get("supports_preview_metadata") is True)
