"""What every handler reaches through ``request.app``: one object, one key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from engine.environment import Environment
    from server.config import ServerConfig
    from server.prompt_queue import PromptQueue
    from server.runtime import Runtime
    from server.storage import Storage
    from server.ws import Hub


@dataclass
class ServerState:
    config: ServerConfig
    env: Environment  # folders only (device "cpu"); the session has its own
    storage: Storage
    queue: PromptQueue
    hub: Hub
    runtime: Runtime


STATE: web.AppKey[ServerState] = web.AppKey("steerflow_state", ServerState)


def state(request: web.Request) -> ServerState:
    return request.app[STATE]
