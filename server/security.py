"""Refuse cross-site requests, DNS rebinding and (optionally) unauthenticated callers.

* Host: when bound to loopback, the ``Host`` header must name a loopback host,
  so a page on ``evil.example`` that re-resolves to 127.0.0.1 is refused even
  for reads (DNS rebinding).
* Origin: a request carrying an ``Origin`` must come from this server's own
  origin or an allow-listed one (``Origin: null`` never is); state-changing requests
  and websockets from a ``cross-site`` context (``Sec-Fetch-Site``) are refused as
  well. CORS headers go only to an allow-listed origin (``--allow-origin``, :func:`cors`):
  a page there may call the API directly; other pages cannot read responses.
* Token: with a token set, every API route needs ``Authorization: Bearer``,
  ``?token=`` (browsers cannot set headers on websockets and ``<img>``) or the
  session cookie; only the web app's static files are public. Opening the app once
  as ``/?token=T`` sets that cookie (HttpOnly, SameSite=Strict, path /; its value an
  HMAC of the token, never the token) and redirects to ``./`` without the token, so
  an app that cannot send the token (ComfyUI's official frontend) works, and the
  token stays out of the address bar, history and logs. The cookie's name carries
  the port: browsers share cookies across the ports of one host.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from server.config import ServerConfig, is_loopback, normalize_origin
from server.errors import ApiError, Handler
from server.pack_routes import matched_pack_route

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CORS_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
PUBLIC_ROUTE_PREFIX = "canvas"
INDEX_ROUTE = "canvas-index"
COOKIE_PREFIX = "steerflow_token_"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def security_middleware(config: ServerConfig) -> web.middleware:  # type: ignore[valid-type]
    """The middleware enforcing :mod:`server.security`'s rules for ``config``."""
    own_host = config.host.strip("[]").lower()
    token = config.token.encode() if config.token else None
    cookie = cookie_value(config.token) if config.token else ""
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
        if allowed_origin and request.method == "OPTIONS" \
                and "Access-Control-Request-Method" in request.headers:
            # a preflight carries no credentials: answered before the token check
            return web.Response(status=204, headers={
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": request.headers.get(
                    "Access-Control-Request-Headers", "Content-Type, Authorization")[:1024],
                "Access-Control-Max-Age": "600"})
        if token is not None:
            if "token" in request.query and _route_name(request) == INDEX_ROUTE:
                return _sign_in(request, token, cookie, host)
            public = _is_public(request) and not await matched_pack_route(request)
            if not public and not _token_ok(request, token, cookie, host):
                raise _unauthorized()
        return await handler(request)

    return middleware


def cors(config: ServerConfig) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An ``on_response_prepare`` hook: every response to an allow-listed origin (errors
    and files included) names it in ``Access-Control-Allow-Origin``."""

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and normalize_origin(origin) in config.allow_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"

    return add_headers


@functools.lru_cache(maxsize=256)
def _loopback_host(host: str, own_host: str) -> bool:
    name = _split_host(host)[0]
    return name is not None and (name == own_host or is_loopback(name))


@functools.lru_cache(maxsize=256)  # a handful of distinct Host headers in practice
def _split_host(host: str) -> tuple[str | None, int | None]:
    """``Host`` header → (lower-case name without brackets, port or None); (None, None)
    for one that is no host (a Host holds no user, path, query or fragment: read as a
    URL, "evil@127.0.0.1" or "127.0.0.1#.evil" would name the loopback host)."""
    if any(c in host for c in "@/?#\\") or any(c.isspace() for c in host.strip()):
        return None, None
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


def _route_name(request: web.Request) -> str:
    return getattr(request.match_info.route, "name", None) or ""


def _is_public(request: web.Request) -> bool:
    # (a node pack's GET route falls to the web app's catch-all file route: the caller
    # checks matched_pack_route too)
    return _route_name(request).startswith(PUBLIC_ROUTE_PREFIX)


def _unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", "missing or invalid token: send "
                    "'Authorization: Bearer <token>', add ?token=<token>, or open the app "
                    "once as /?token=<token> (sets a cookie)",
                    headers={"WWW-Authenticate": "Bearer"})


def cookie_value(token: str) -> str:
    """The session cookie's value for ``token``: derived, so the cookie (which browsers
    keep on disk) is not the token itself."""
    return hmac.new(token.encode(), b"steerflow session cookie", hashlib.sha256).hexdigest()


def cookie_name(host: str | None) -> str:
    """``steerflow_token_<port>``: one cookie per server on a shared host name."""
    port = _split_host(host)[1] if host else None
    return f"{COOKIE_PREFIX}{port or 80}"


def _token_ok(request: web.Request, token: bytes, cookie: str, host: str | None) -> bool:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    given = value.strip() if scheme.lower() == "bearer" else request.query.get("token", "")
    if given:
        return hmac.compare_digest(given.encode(), token)
    sent = request.cookies.get(cookie_name(host), "")
    return bool(sent) and hmac.compare_digest(sent.encode(), cookie.encode())


def _sign_in(request: web.Request, token: bytes, cookie: str,
             host: str | None) -> web.StreamResponse:
    """``/?token=T``: set the session cookie and redirect to the page without the token
    (relative, so a reverse proxy's path prefix is kept); a wrong token is a 401."""
    if not hmac.compare_digest(request.query.get("token", "").encode(), token):
        raise _unauthorized()
    rest = [(k, v) for k, v in request.query.items() if k != "token"]
    response = web.Response(status=303, headers={
        "Location": "./" + (f"?{urlencode(rest)}" if rest else ""),
        "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
    response.set_cookie(cookie_name(host), cookie, path="/", httponly=True,
                        samesite="Strict", secure=request.secure or None)
    return response
