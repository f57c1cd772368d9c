"""Build and run the server: ``create_app``, ``serve`` and the ``serve`` options.

    app = create_app(ServerConfig(base_dir="."))      # an aiohttp Application
    steerflow serve --port 8188 [--token T]           # via serve(args)

The server process speaks HTTP and websockets, validates and queues; prompts
run in worker processes (:mod:`server.pool`, :mod:`server.worker`), so no
node can stall or crash it. Start-up does no heavy import: the node packs are
loaded in a thread while the server already answers, and they import torch and
diffusers only when a node runs, which happens in the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from server import (
    canvas,
    comfy_frontend,
    connections,
    convert,
    extensions,
    files,
    info,
    jobs,
    routes,
    userdata,
)
from server.config import ConfigError, ServerConfig, add_serve_arguments
from server.errors import ApiError, Handler, error_middleware
from server.pack_routes import pack_routes_middleware
from server.pool import make_runtime
from server.prompt_queue import PromptQueue
from server.security import cors, security_middleware
from server.state import STATE, ServerState
from server.storage import Storage, StorageError, open_error
from server.ws import Hub

log = logging.getLogger(__name__)


class BadRequestLines(logging.Filter):
    """aiohttp logs a request it cannot parse (a request line over 8 KB, a bad header)
    with a whole traceback, though the client just got its 400: one info line here."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {str(exc)[:200]}"
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _quiet_bad_requests() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestLines) for f in server_log.filters):
        server_log.addFilter(BadRequestLines())


#: routes that stream their body under --max-upload-mb (and answer its 413 themselves)
STREAMED_UPLOADS = frozenset({files.upload_image, comfy_frontend.upload_mask})


@web.middleware
async def declared_size_middleware(request: web.Request, handler: Handler
                                   ) -> web.StreamResponse:
    """413 before any body is read when Content-Length is over what the route would read
    (``client_max_size``, i.e. ``max_prompt_bytes``): a client must not hold a handler
    waiting on gigabytes it announced."""
    limit = request.client_max_size
    size = request.content_length
    if size is not None and size > limit and request.match_info.handler not in STREAMED_UPLOADS:
        fields = {"node_errors": {}} if request.match_info.handler is routes.post_prompt else {}
        raise ApiError(413, "request_entity_too_large", f"the request body is too large "
                       f"({size} bytes; the limit is {limit})",
                       extra_info={"limit_bytes": limit}, **fields)
    return await handler(request)


DB_NAME = "steerflow.db"
__all__ = ["add_serve_arguments", "create_app", "serve"]


def create_app(config: ServerConfig, *,
               registry_factory: Callable[[], Any] | None = None) -> web.Application:
    """The application; raises ConfigError/StorageError for unusable settings.

    ``registry_factory`` builds the node registry prompts are validated against
    (default: ``config.registry_factory``, else the built-in and custom packs); the
    worker process builds its own from the same configuration.
    """
    config.check()
    _quiet_bad_requests()
    env = config.environment()
    storage = Storage(config.data_dir / DB_NAME, fsync=config.fsync)
    hub = Hub(private=bool(config.token))
    queue = PromptQueue(storage, on_change=hub.status_changed, max_attempts=config.max_attempts)
    hub.queue_remaining, hub.queue_lock = queue.remaining, queue.lock
    hub.server_features = comfy_frontend.server_features(config.max_upload_bytes)
    runtime = make_runtime(config, queue, hub, env, registry_factory)

    app = web.Application(middlewares=[error_middleware, security_middleware(config),
                                       declared_size_middleware,
                                       pack_routes_middleware],  # after the checks
                          client_max_size=config.max_prompt_bytes)
    app[STATE] = ServerState(config, env, storage, queue, hub, runtime)
    if config.allow_origins:
        app.on_response_prepare.append(cors(config))
    api = [*routes.ROUTES, *info.ROUTES, *userdata.ROUTES, *comfy_frontend.ROUTES,
           *jobs.ROUTES, *convert.ROUTES,
           ("GET", "/view", files.view),
           ("POST", "/upload/image", files.upload_image), ("GET", "/ws", hub.handle)]
    for prefix in ("", "/api"):
        for method, path, handler in api:
            if method == "GET":
                app.router.add_get(prefix + path, handler)
            else:
                app.router.add_route(method, prefix + path, handler)
    for method, path, handler in [*comfy_frontend.STATIC_ROUTES, *userdata.STATIC_ROUTES]:
        app.router.add_route(method, path, handler)
    comfy_frontend.install_log_buffer(app, hub)
    extensions.install(app)  # before the web app's catch-all file route
    for method, path, handler, name in canvas.ROUTES:
        app.router.add_route(method, path, handler, name=name)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    return app


async def _on_startup(app: web.Application) -> None:
    st = app[STATE]
    # Half-written uploads and user-data saves from a killed server, and last run's
    # temp/, go first.
    loop = asyncio.get_running_loop()
    try:  # the previews the stored history shows stay (ComfyUI's history goes at a restart)
        shown = await loop.run_in_executor(None, st.storage.temp_outputs)
    except sqlite3.Error:
        shown = frozenset()  # a damaged database: runtime.start below says so
    await loop.run_in_executor(None, partial(files.remove_leftovers, st.env,
                                             keep_temp=shown))
    await loop.run_in_executor(None, userdata.remove_leftovers, st.config.user_dir)
    st.hub.attach(loop)
    try:  # recovers the stored queue: the first read of most of the database
        st.runtime.start(loop)
    except sqlite3.Error as exc:  # a damaged file: serve() says so in one line, exit 2
        raise open_error(st.storage.path, exc) from exc


async def _on_shutdown(app: web.Application) -> None:
    st = app[STATE]
    await st.hub.close_all()
    st.runtime.stop()


async def _on_cleanup(app: web.Application) -> None:
    app[STATE].storage.close()


class _AccessLog(AbstractAccessLogger):
    """Method, path and status only: a ``?token=`` must not end up in logs."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %d %.1fms", request.remote, request.method, request.path,
                         response.status, time * 1000)


def connection_limits(config: ServerConfig) -> connections.ConnectionLimits:
    return connections.ConnectionLimits(config.header_timeout, config.body_timeout,
                                        config.max_pending_connections)


def serve(args: argparse.Namespace) -> int:
    """Run the server until interrupted; the exit code for ``steerflow serve``."""
    try:
        config = ServerConfig.from_args(args)
        app = create_app(config)
    except (ConfigError, StorageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host = f"[{config.host}]" if ":" in config.host else config.host

    def announce(_message: str) -> None:
        print(f"Steerflow server on http://{host}:{config.port} (data in {config.base_dir})"
              + (", token required" if config.token else ""), flush=True)

    try:
        # web.run_app's life cycle, with header/body timeouts (server/connections.py)
        connections.run_app(app, host=config.host, port=config.port, print=announce,
                            limits=connection_limits(config),
                            access_log=logging.getLogger("aiohttp.access")
                            if config.verbose else None,
                            access_log_class=_AccessLog, shutdown_timeout=5.0)
    except StorageError as exc:  # found at start-up, recovering the queue (a damaged file)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot listen on {config.host}:{config.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
