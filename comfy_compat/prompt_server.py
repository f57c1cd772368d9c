"""ComfyUI's ``server.PromptServer`` for custom node packs (no torch imported here).

Packs write ``from server import PromptServer`` and then
``PromptServer.instance.send_sync("my.event", {...})`` or
``@PromptServer.instance.routes.get("/my/route")``. Steerflow's own top-level
package is also named ``server``; rather than shadow it (which would break our
code) or rename it, ``server/__init__.py`` exposes ``PromptServer`` and
``BinaryEventTypes`` lazily through a module ``__getattr__`` that imports them from
here. ``import server`` keeps meaning our aiohttp server, and a pack's
``server.PromptServer`` resolves to this class in whichever process imports it.

- ``send_sync(event, data, sid)`` goes through :attr:`PromptServer.sink`. The
  adapter sets it to emit the event on the running node's execution context, so
  in a Session the caller's ``on_event`` sees it, and in the worker it travels the
  worker's event channel and the server relays it to the prompt's websocket client
  as ``{"type": event, "data": data}`` (ComfyUI's shape). Outside a node (at import,
  in the server process) there is no prompt to attach it to and it is dropped.
  ``BinaryEventTypes.PREVIEW_IMAGE`` frames become preview images.
- ``routes`` is an aiohttp ``RouteTableDef``: route decorators work at import, and
  the routes are collected in :attr:`PromptServer.routes`. The worker reports the
  GET/POST ones and answers them (:mod:`comfy_compat.http_bridge`); the server
  forwards requests on those paths there (:mod:`server.pack_routes`), since its own
  router cannot grow after start and the handlers belong with the nodes.
- ``loop`` is an event loop running in its own thread (the one the pack routes are
  answered on), so ``asyncio.run_coroutine_threadsafe(coro, PromptServer.instance.loop)``
  and ``loop.call_soon_threadsafe`` from a node work as in ComfyUI.
- ``app`` answers what packs call at import: ``app.router.frozen`` (False: routes may
  still be added), ``app.add_routes([...])`` (route definitions join ``routes``; static
  folders, ``web.static(...)``, are not served: a pack's web files go in its
  ``WEB_DIRECTORY``) and ``app.router.add_get`` / ``add_post`` / ``add_route``.
- ``add_on_prompt_handler`` handlers are collected but not called.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from aiohttp import web

log = logging.getLogger(__name__)

EventSink = Callable[[Any, Any, "str | None"], None]
_loop_lock = threading.Lock()


class BinaryEventTypes:
    """ComfyUI's binary websocket message types."""

    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3


class _PackRouter:
    """``PromptServer.instance.app.router``: routes added here join the pack routes."""

    frozen = False

    def __init__(self, routes: web.RouteTableDef):
        self._routes = routes

    def add_route(self, method: str, path: str, handler: Any, **kwargs: Any) -> None:
        self._routes.route(method.upper(), path, **kwargs)(handler)

    def add_get(self, path: str, handler: Any, **kwargs: Any) -> None:
        self.add_route("GET", path, handler, **kwargs)

    def add_post(self, path: str, handler: Any, **kwargs: Any) -> None:
        self.add_route("POST", path, handler, **kwargs)

    def add_static(self, prefix: str, path: Any, **_kwargs: Any) -> None:
        log.info("a pack's static folder %s (%s) is not served; use WEB_DIRECTORY",
                 prefix, path)


class _PackApp:
    """``PromptServer.instance.app`` as packs use it at import (see the module doc)."""

    def __init__(self, routes: web.RouteTableDef):
        self.router = _PackRouter(routes)

    def add_routes(self, definitions: Any) -> list[Any]:
        for definition in definitions:
            if isinstance(definition, web.RouteDef):
                self.router.add_route(definition.method, definition.path,
                                      definition.handler, **definition.kwargs)
            elif isinstance(definition, web.StaticDef):
                self.router.add_static(definition.prefix, definition.path)
        return []


class PromptServer:
    """The singleton packs reach as ``PromptServer.instance``."""

    instance: ClassVar[PromptServer]

    def __init__(self) -> None:
        self.routes = web.RouteTableDef()
        self.sink: EventSink | None = None
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.on_prompt_handlers: list[Callable[[dict[str, Any]], dict[str, Any]]] = []
        self.supports = ["custom_nodes_from_web"]
        self.app: Any = _PackApp(self.routes)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.prompt_queue: Any = None
        self.number = 0  # ComfyUI's queue counter (packs read and bump it)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The packs' event loop, started on first use (see the module docstring)."""
        with _loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="steerflow-pack-loop",
                                 daemon=True).start()
                self._loop = loop
            return self._loop

    @loop.setter
    def loop(self, value: asyncio.AbstractEventLoop) -> None:
        self._loop = value

    def send_sync(self, event: Any, data: Any, sid: str | None = None) -> None:
        """Send an event to the websocket client of the running prompt (see module doc)."""
        if self.sink is None:
            log.debug("PromptServer.send_sync(%r) outside a run; dropped", event)
            return
        self.sink(event, data, sid)

    async def send(self, event: Any, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    async def send_json(self, event: Any, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    def send_progress_text(self, text: str, node_id: str, sid: str | None = None) -> None:
        self.send_sync("progress_text", {"text": text, "node_id": node_id}, sid)

    def add_on_prompt_handler(self, handler: Callable[[dict[str, Any]], dict[str, Any]]
                              ) -> None:
        self.on_prompt_handlers.append(handler)


PromptServer.instance = PromptServer()
