"""``comfy_execution.graph``: the names packs import from it.

``DynamicPrompt`` is the engine's :class:`engine.expansion.DynamicGraph` (a pack
gets the running one as its hidden ``DYNPROMPT`` input); ``ExecutionBlocker`` is
the engine's :class:`engine.lists.ExecutionBlocker`.
"""

from __future__ import annotations

from engine.expansion import DependencyCycleError, DynamicGraph
from engine.lists import ExecutionBlocker

DynamicPrompt = DynamicGraph


class NodeNotFoundError(KeyError):
    """Raised by ComfyUI for an unknown node id; ours raises :class:`KeyError`."""


__all__ = ["DependencyCycleError", "DynamicPrompt", "ExecutionBlocker", "NodeNotFoundError"]
