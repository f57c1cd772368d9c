"""``POST /workflow/convert``: any workflow we read, as our document; and
``POST /workflow/export``: any workflow we read, as ComfyUI's UI format.

The canvas sends ComfyUI UI-format files (and the ``workflow`` chunk of PNGs)
here rather than converting them itself, so one converter, driven by the
server's node schemas, serves the CLI, the Python API and the canvas.

Body: the workflow itself, or ``{"workflow": <workflow>}``. Reply:
``{"document": {...}, "warnings": [str, ...], "source": "comfyui" | "api" | "document"}``.

``/workflow/export`` answers ``{"workflow": <UI format>, "warnings": [...]}``: the view
:func:`engine.comfy_export.ui_view` writes into PNGs, which ComfyUI's front end opens.
The canvas saves its workflow library (``/userdata/workflows/...``) in that format, so
ComfyUI's own workflow sidebar opens what the canvas saved.

The work is sized by what the workflow unpacks to, not by its body: nested subgraphs
multiply (a 7 KB file of subgraphs of 10 instances each, 5 deep, is 100,000 nodes).
Past :data:`MAX_CONVERT_NODES` it is refused with a 413 before any unpacking, and past
:data:`INLINE_NODES` it converts (and its reply is encoded) off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from aiohttp import web

from engine.comfy_group_nodes import group_configs, group_name
from engine.comfy_subgraphs import MAX_DEPTH, definition_list
from engine.comfy_workflow import is_ui_workflow
from engine.workflow import WorkflowFormatError, from_object, is_document, prompt_to_document
from server.errors import ApiError, dumps
from server.routes import read_json
from server.state import state

INLINE_NODES = 200  # bigger workflows convert off the event loop
# Far more than any canvas shows (ComfyUI's big workflows have a few thousand nodes);
# each node costs ~0.2 ms to convert and ~230 bytes of reply.
MAX_CONVERT_NODES = 10_000


async def convert_workflow(request: web.Request) -> web.Response:
    obj = _workflow(await read_json(request))
    source = "comfyui" if is_ui_workflow(obj) else "document" if is_document(obj) else "api"
    return await _reply(request, obj, partial(_convert, source=source))


async def export_workflow(request: web.Request) -> web.Response:
    return await _reply(request, _workflow(await read_json(request)), _export)


def _workflow(body: Any) -> Any:
    """The workflow a body holds: itself, or ``{"workflow": ...}``."""
    wrapped = isinstance(body, dict) and set(body) == {"workflow"} \
        and not _is_node(body["workflow"])  # else a one-node prompt, its node "workflow"
    return body["workflow"] if wrapped else body


async def _reply(request: web.Request, obj: Any,
                 render: Callable[[Any, Any, list[str]], str]) -> web.Response:
    """``render(obj, registry, warnings)``'s JSON text, sized first (413 past
    :data:`MAX_CONVERT_NODES` once unpacked), off the event loop when big; a workflow we
    cannot read is a 400."""
    size = unpacked_size(obj, MAX_CONVERT_NODES)
    if size > MAX_CONVERT_NODES:
        raise ApiError(413, "workflow_too_large", f"the workflow has more than "
                       f"{MAX_CONVERT_NODES} nodes once its subgraphs and group nodes are "
                       "unpacked (each instance counts all the nodes inside it); split it "
                       "into smaller workflows", extra_info={"limit_nodes": MAX_CONVERT_NODES})
    registry = await state(request).runtime.get_registry()
    warnings: list[str] = []
    try:
        if size <= INLINE_NODES:
            text = render(obj, registry, warnings)
        else:
            text = await asyncio.get_running_loop().run_in_executor(
                None, render, obj, registry, warnings)
    except WorkflowFormatError as exc:
        raise ApiError(400, "invalid_workflow", str(exc)) from None
    except RecursionError:
        raise ApiError(400, "invalid_workflow", "the workflow is nested too deeply") from None
    return web.Response(text=text, content_type="application/json")


def _convert(obj: Any, registry: Any, warnings: list[str], *, source: str) -> str:
    """The reply's JSON text (encoding a big document takes a while too)."""
    prompt, document = from_object(obj, registry, warnings)
    if document is None:
        document = prompt_to_document(prompt)
    return dumps({"document": document, "warnings": warnings, "source": source})


def _is_node(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("class_type"), str)


def unpacked_size(obj: Any, cap: int) -> int:
    """How many nodes ``obj`` converts to: a UI workflow's nodes with every subgraph and
    group-node instance counted as the nodes it unpacks to (as engine.comfy_subgraphs
    unpacks them), a prompt's or document's nodes. Counting stops once past ``cap``."""
    if not isinstance(obj, dict):
        return 0
    if is_ui_workflow(obj):
        return _UnpackedCount(obj, cap).count(obj.get("nodes"), 0)
    prompt = obj.get("prompt")
    return len(prompt) if isinstance(prompt, dict) else len(obj)


class _UnpackedCount:
    """Nodes per definition, memoized: a nested definition is counted once, however
    many instances use it, so a 'billion laughs' costs as much as its body."""

    def __init__(self, obj: Mapping[str, Any], cap: int):
        self.cap = cap
        self.definitions: dict[str, Any] = {}
        for d in definition_list(obj):  # the last of one id wins, as in the flattener
            self.definitions[str(d.get("id"))] = d.get("nodes")
        for name, config in group_configs(obj).items():
            self.definitions.setdefault(f"group:{name}", config.get("nodes"))
        self.sizes: dict[str, int] = {}
        self.open: set[str] = set()  # being counted: one containing itself is left out

    def count(self, nodes: Any, depth: int) -> int:
        total = 0
        for node in nodes if isinstance(nodes, list) else []:
            key = self._key(node.get("type")) if isinstance(node, dict) else None
            if key is None:
                total += 1
            elif key not in self.open and depth < MAX_DEPTH:
                if key not in self.sizes:
                    self.open.add(key)
                    self.sizes[key] = self.count(self.definitions[key], depth + 1)
                    self.open.discard(key)
                total += self.sizes[key]
            if total > self.cap:
                break
        return total

    def _key(self, kind: Any) -> str | None:
        if not isinstance(kind, str):
            return None
        if kind in self.definitions:
            return kind
        name = group_name(kind)
        return f"group:{name}" if name is not None and f"group:{name}" in self.definitions \
            else None


def _export(obj: Any, registry: Any, warnings: list[str]) -> str:
    from engine.comfy_export import ui_view
    from engine.comfy_workflow import RegistrySchemas

    prompt, document = from_object(obj, registry, warnings)
    if document is None:
        document = prompt_to_document(prompt)
    view = ui_view(document, RegistrySchemas(registry))
    return dumps({"workflow": view, "warnings": warnings})


ROUTES: list[tuple[str, str, Any]] = [("POST", "/workflow/convert", convert_workflow),
                                      ("POST", "/workflow/export", export_workflow)]
