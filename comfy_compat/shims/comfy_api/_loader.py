"""The V3 node classes of a pack module exposing ``comfy_entrypoint`` (ComfyUI's
``load_custom_node``): call it (awaited if async), await the extension's ``on_load()``,
then ``get_node_list()``; each class's type is its schema's ``node_id``.

It runs in a thread with an event loop of its own (the caller may be inside a running
loop, the server's), within the pack import time limit. It reads classes by their
methods, never by identity, so importing it as ``comfy_compat.shims.comfy_api._loader``
is safe.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any


def extension_nodes(module: ModuleType, timeout: float | None = None
                    ) -> tuple[list[tuple[str, type, str | None]], list[str]]:
    """``([(node_id, class, display_name)], problems)``; nothing without an entry point."""
    entry = getattr(module, "comfy_entrypoint", None)
    if entry is None:
        return [], []
    if not callable(entry):
        return [], ["comfy_entrypoint is not callable"]
    if timeout is None:
        from engine.registry import PACK_IMPORT_TIMEOUT as timeout
    try:
        classes = _run(lambda: _node_list(entry), timeout)
    except Exception as exc:
        return [], [f"comfy_entrypoint failed: {type(exc).__name__}: {exc}"]
    found: list[tuple[str, type, str | None]] = []
    problems: list[str] = []
    for cls in classes:
        name = getattr(cls, "__name__", repr(cls))
        try:
            schema = cls.GET_SCHEMA()
            found.append((str(schema.node_id), cls, schema.display_name))
        except Exception as exc:  # one broken node does not drop the pack
            problems.append(f"node {name!r} skipped: {type(exc).__name__}: {exc}")
    return found, problems


async def _resolved(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def _node_list(entry: Callable[[], Any]) -> list[Any]:
    extension = await _resolved(entry())
    if not callable(getattr(extension, "get_node_list", None)):
        raise TypeError(f"comfy_entrypoint() returned {type(extension).__name__}, "
                        "not a ComfyExtension")
    on_load = getattr(extension, "on_load", None)
    if callable(on_load):
        await _resolved(on_load())
    nodes = await _resolved(extension.get_node_list())
    if not isinstance(nodes, list | tuple):
        raise TypeError(f"get_node_list() returned {type(nodes).__name__}, not a list of "
                        "node classes")
    return list(nodes)


def _run(make: Callable[[], Any], timeout: float) -> Any:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(make())
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="comfy-entrypoint", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"did not finish within {timeout:g} s")
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, Exception):
            raise error
        raise RuntimeError(f"{type(error).__name__}: {error}")
    return outcome["value"]
