"""Structured JSON errors, and the middleware that guarantees every failure is one."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(type_: str, message: str, details: str = "",
               extra_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """ComfyUI's error object: ``{type, message, details, extra_info}``."""
    return {"type": type_, "message": message, "details": details,
            "extra_info": extra_info or {}}


class ApiError(Exception):
    """Raised by handlers; becomes ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, type_: str, message: str, details: str = "", *,
                 extra_info: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None, **fields: Any):
        super().__init__(message)
        self.status = status
        self.body = {"error": error_body(type_, message, details, extra_info), **fields}
        self.headers = headers or {}

    def response(self) -> web.Response:
        message = self.body["error"]["message"]
        return json_response(self.body, status=self.status, headers=self.headers,
                             reason=reason_phrase(message) if self.status < 500 else None)


def storage_error(exc: OSError, what: str, type_: str = "write_failed") -> ApiError:
    """A file-system failure as a structured reply: a full disk is 507, a read-only or
    forbidden folder 403, a file where the path needs a folder (or a folder where it
    needs a file) 409, anything else 500; ``what`` says what could not be done."""
    import errno

    hint = ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        status = 507
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        status = 403
    elif exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        status = 409
        hint = " (a file is in the way of a folder the path needs, or the reverse)"
    else:
        status = 500
    return ApiError(status, type_, f"{what}: {exc.strerror or exc}{hint}")


def reason_phrase(message: str) -> str | None:
    """The message as the status line's reason (printable ASCII, one line, bounded):
    ComfyUI's front end shows a failed request's ``statusText``, not its body."""
    text = "".join(c if " " <= c <= "~" else "?" for c in " ".join(message.split()))[:200]
    return text or None


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None,
                  reason: str | None = None) -> web.Response:
    """A JSON response that never fails on odd values (they become strings)."""
    return web.Response(text=dumps(data), status=status, reason=reason, headers=headers,
                        content_type="application/json")


# Strict (no bare NaN/Infinity: browsers' JSON.parse rejects them) and UTF-8 rather
# than \uXXXX escapes, which made non-ASCII text up to 3x its size in the history.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)
_ASCII_ENCODER = json.JSONEncoder(allow_nan=False)
_MAX_DEPTH = 200  # of the fallback's walk; deeper branches become a placeholder


def dumps(data: Any) -> str:
    """Strict JSON text for responses, websocket messages and the database; never raises.

    Non-finite floats become ``null``, other odd values (sets, objects) their repr.
    """
    try:
        text = _ENCODER.encode(data)  # the fast path: one C-encoder pass
    except (TypeError, ValueError, RecursionError):
        # Node UI outputs may hold arbitrary objects; a repr beats a crashed worker.
        text = _ENCODER.encode(_strict(data, 0, set()))
    if text.isascii():  # O(1) in CPython: nothing more to check
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (JSON allows "\ud800"): raw they cannot be encoded as UTF-8
        # nor stored in SQLite; escaped they are valid JSON.
        return _ASCII_ENCODER.encode(_strict(data, 0, set()))
    return text


def _strict(value: Any, depth: int, path: set[int]) -> Any:
    """A copy of ``value`` that the strict encoder accepts."""
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):  # Python refuses to print more than 4300 digits
        return value if value.bit_length() < 14_000 else f"<{value.bit_length()}-bit integer>"
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth > _MAX_DEPTH:
        return "<nested too deeply>"
    if isinstance(value, dict | list | tuple | set | frozenset):
        if id(value) in path:
            return "<circular>"
        path.add(id(value))
        try:
            if isinstance(value, dict):
                return {_key(k): _strict(v, depth + 1, path) for k, v in value.items()}
            return [_strict(v, depth + 1, path) for v in value]
        finally:
            path.discard(id(value))
    return _repr(value)


def _key(key: Any) -> str | int | float | bool | None:
    if isinstance(key, float) and not math.isfinite(key):
        return repr(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return _strict(key, 0, set())
    return key if isinstance(key, str | float | bool) or key is None else _repr(key)


def _repr(value: Any) -> str:
    try:
        return repr(value)[:1000]
    except Exception:  # a failing __repr__, or an int of more than 4300 digits
        return f"<{type(value).__name__}>"


def _slug(reason: str) -> str:
    return reason.lower().replace(" ", "_").replace("-", "_") or "http_error"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a structured JSON error; log (never send) tracebacks."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow",)}
        return ApiError(exc.status, _slug(exc.reason), exc.reason, headers=headers).response()
    except asyncio.CancelledError:
        raise
    except ConnectionResetError as exc:  # aiohttp's ClientConnectionResetError included
        if not _client_gone(request):
            log.exception("unhandled error in %s %s", request.method, request.path)
            return ApiError(500, "internal_error", "internal server error; see the server "
                            "log").response()
        # The client went away mid-request (an upload cut off): nothing to fix here, and
        # no answer can reach it. One line, no traceback (aiohttp would log an ERROR).
        log.info("%s %s: the client disconnected before the request was read (%s)",
                 request.method, request.path, exc or type(exc).__name__)
        return ApiError(400, "client_disconnected", "the connection was lost").response()
    except Exception as exc:
        if (damaged := _damaged_database(request, exc)) is not None:
            return damaged.response()
        if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
            # a file name past the file system's limit (255 bytes), wherever a route met it
            return ApiError(400, "name_too_long", "a file or folder name in the request is "
                            "longer than the file system allows (255 bytes)").response()
        log.exception("unhandled error in %s %s", request.method, request.path)
        return ApiError(500, "internal_error", "internal server error; see the server log"
                        ).response()


def _damaged_database(request: web.Request, exc: Exception) -> ApiError | None:
    """A damaged database file met by a request (a page start-up did not read) as a 503
    that names the file and what to do, logged in one line; None for other errors."""
    from server.state import STATE  # here: server.storage imports this module
    from server.storage import damage_hint, is_damaged

    st = request.app.get(STATE)
    if st is None or not is_damaged(exc):
        return None
    path = st.storage.path
    text = f"cannot read the database {path}: {exc}; {damage_hint(path, running=True)}"
    log.error("%s %s: %s", request.method, request.path, text)
    return ApiError(503, "database_damaged", text)


def _client_gone(request: web.Request) -> bool:
    """Whether this request's own connection is lost (not some other socket's)."""
    transport = request.transport
    return transport is None or transport.is_closing()
