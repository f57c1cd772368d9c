"""``POST /workflow/convert``: any workflow we read, as our document.

The canvas sends ComfyUI UI-format files (and the ``workflow`` chunk of PNGs)
here rather than converting them itself, so one converter, driven by the
server's node schemas, serves the CLI, the Python API and the canvas.

Body: the workflow itself, or ``{"workflow": <workflow>}``. Reply:
``{"document": {...}, "warnings": [str, ...], "source": "comfyui" | "api" | "document"}``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from engine.comfy_workflow import is_ui_workflow
from engine.workflow import WorkflowFormatError, from_object, is_document, prompt_to_document
from server.errors import ApiError, json_response
from server.routes import read_json
from server.state import state

INLINE_NODES = 200  # bigger workflows convert off the event loop


async def convert_workflow(request: web.Request) -> web.Response:
    body = await read_json(request)
    wrapped = isinstance(body, dict) and set(body) == {"workflow"} \
        and not _is_node(body["workflow"])  # else a one-node prompt, its node "workflow"
    obj = body["workflow"] if wrapped else body
    source = "comfyui" if is_ui_workflow(obj) else "document" if is_document(obj) else "api"
    registry = await state(request).runtime.get_registry()
    warnings: list[str] = []
    try:
        if _size(obj) <= INLINE_NODES:
            prompt, document = from_object(obj, registry, warnings)
        else:
            prompt, document = await asyncio.get_running_loop().run_in_executor(
                None, from_object, obj, registry, warnings)
        if document is None:
            document = prompt_to_document(prompt)
    except WorkflowFormatError as exc:
        raise ApiError(400, "invalid_workflow", str(exc)) from None
    except RecursionError:
        raise ApiError(400, "invalid_workflow", "the workflow is nested too deeply") from None
    return json_response({"document": document, "warnings": warnings, "source": source})


def _is_node(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("class_type"), str)


def _size(obj: Any) -> int:
    nodes = obj.get("nodes") if isinstance(obj, dict) else None
    return len(nodes) if isinstance(nodes, list) else len(obj) if isinstance(obj, dict) else 0


ROUTES: list[tuple[str, str, Any]] = [("POST", "/workflow/convert", convert_workflow)]
