"""Steerflow's HTTP + websocket server, speaking ComfyUI's protocol.

Nothing here imports torch: the server validates and queues prompts, and a
pool of worker processes runs them (see :mod:`server.pool`, a pool of one by
default, and :mod:`server.worker`).
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # ComfyUI packs do ``from server import PromptServer``: ComfyUI's server module
    # shares our package's name, so its public names resolve here, lazily (torch-free;
    # see comfy_compat.prompt_server). Our own ``import server`` is unaffected.
    if name in ("PromptServer", "BinaryEventTypes"):
        from comfy_compat import prompt_server

        return getattr(prompt_server, name)
    if name == "web":  # ComfyUI's server.py imports aiohttp's web; packs use server.web
        from aiohttp import web

        return web
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
