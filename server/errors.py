"""Structured JSON errors, and the middleware that guarantees every failure is one."""

from __future__ import annotations

import asyncio
import json
import logging
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
        return json_response(self.body, status=self.status, headers=self.headers)


def json_response(data: Any, *, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response that never fails on odd values (they become strings)."""
    return web.Response(text=dumps(data), status=status, headers=headers,
                        content_type="application/json")


def dumps(data: Any) -> str:
    try:
        return json.dumps(data)  # the fast path: the module's cached encoder
    except (TypeError, ValueError):
        # Node UI outputs may hold arbitrary objects; a repr beats a crashed worker.
        return json.dumps(data, default=_fallback, check_circular=True)


def _fallback(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)[:1000]


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
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return ApiError(500, "internal_error", "internal server error; see the server log"
                        ).response()
