"""Refuse cross-site requests, DNS rebinding and (optionally) unauthenticated callers.

* Host: when bound to loopback, the ``Host`` header must name a loopback host,
  so a page on ``evil.example`` that re-resolves to 127.0.0.1 is refused even
  for reads (DNS rebinding).
* Origin: a request carrying an ``Origin`` must come from this server's own
  origin or an allow-listed one; state-changing requests and websockets from
  a ``cross-site`` context (``Sec-Fetch-Site``) are refused as well. We never
  send CORS headers, so browsers cannot read cross-origin responses either.
* Token: with a token set, every API route needs ``Authorization: Bearer`` or
  ``?token=`` (browsers cannot set headers on websockets and ``<img>``); only
  the canvas's static files are public.
"""

from __future__ import annotations

import functools
import hmac
from urllib.parse import urlsplit

from aiohttp import web

from server.config import ServerConfig, is_loopback, normalize_origin
from server.errors import ApiError, Handler

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_ROUTE_PREFIX = "canvas"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def security_middleware(config: ServerConfig) -> web.middleware:  # type: ignore[valid-type]
    """The middleware enforcing :mod:`server.security`'s rules for ``config``."""
    own_host = config.host.strip("[]").lower()
    token = config.token.encode() if config.token else None
    check_host = config.loopback  # computed once: parsing it per request costs ~25 µs

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if check_host and host is not None and not _loopback_host(host, own_host):
            raise ApiError(403, "forbidden_host",
                           f"Host {host!r} is not this server's loopback name; refusing "
                           "(possible DNS rebinding)")
        unsafe = request.method not in SAFE_METHODS or _is_websocket(request)
        origin = request.headers.get("Origin")
        allowed_origin = origin is not None and normalize_origin(origin) in config.allow_origins
        if origin is not None and not allowed_origin and not _same_origin(origin, host):
            raise ApiError(403, "cross_origin", f"requests from origin {origin!r} are refused")
        if (unsafe and not allowed_origin
                and request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site"):
            raise ApiError(403, "cross_origin", "cross-site requests are refused")
        if token is not None and not _is_public(request) and not _token_ok(request, token):
            raise ApiError(401, "unauthorized", "missing or invalid token: send "
                           "'Authorization: Bearer <token>' or add ?token=<token>",
                           headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return middleware


@functools.lru_cache(maxsize=256)
def _loopback_host(host: str, own_host: str) -> bool:
    name = _split_host(host)[0]
    return name is not None and (name == own_host or is_loopback(name))


@functools.lru_cache(maxsize=256)  # a handful of distinct Host headers in practice
def _split_host(host: str) -> tuple[str | None, int | None]:
    """``Host`` header → (lower-case name without brackets, port or None)."""
    try:
        parts = urlsplit("//" + host.strip())
        return (parts.hostname or "").rstrip(".") or None, parts.port
    except ValueError:
        return None, None


def _same_origin(origin: str, host: str | None) -> bool:
    if host is None or origin.strip().lower() == "null":
        return False
    try:
        parts = urlsplit(origin.strip())
        o_name, o_port = parts.hostname, parts.port
    except ValueError:
        return False
    default = _DEFAULT_PORTS.get(parts.scheme.lower())
    if not o_name or default is None:
        return False
    h_name, h_port = _split_host(host)
    return (o_name.rstrip(".") == h_name
            and (o_port or default) == (h_port or default))


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _is_public(request: web.Request) -> bool:
    route = request.match_info.route
    name = getattr(route, "name", None) or ""
    return name.startswith(PUBLIC_ROUTE_PREFIX)


def _token_ok(request: web.Request, token: bytes) -> bool:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    given = value.strip() if scheme.lower() == "bearer" else request.query.get("token", "")
    return bool(given) and hmac.compare_digest(given.encode(), token)
