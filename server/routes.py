"""Prompt, queue, history and interrupt routes (ComfyUI's protocol)."""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from typing import Any

from aiohttp import web

from engine.validation import PromptValidationError, describe_issues, to_node_errors
from engine.workflow import WorkflowFormatError, from_object
from server.errors import ApiError, json_response
from server.prompt_queue import QueueItem
from server.state import state
from server.storage import StorageError

MAX_ID_LENGTH = 200
INLINE_VALIDATION_NODES = 64  # bigger prompts are validated off the event loop


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: web.Request, *, required: bool = True) -> Any:
    """The body as JSON whatever its Content-Type (as ComfyUI); 400 if it is not."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ApiError(400, "invalid_json", "the request body is empty; expected JSON")
        return {}
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # includes UnicodeDecodeError
        raise ApiError(400, "invalid_json", "the request body is not valid JSON",
                       str(exc)[:500]) from None


async def read_object(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    body = await read_json(request, required=required)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "the request body must be a JSON object")
    return body


# --- /prompt ---------------------------------------------------------------------
async def get_prompt(request: web.Request) -> web.Response:
    return json_response({"exec_info": {"queue_remaining": state(request).queue.remaining()}})


async def post_prompt(request: web.Request) -> web.Response:
    st = state(request)
    body = await read_object(request)
    if body.get("prompt") is None:
        raise ApiError(400, "no_prompt", "No prompt provided", "the body has no 'prompt'",
                       node_errors={})
    try:
        prompt, _ = from_object(body["prompt"])
    except WorkflowFormatError as exc:
        raise ApiError(400, "invalid_prompt", str(exc), node_errors={}) from None
    prompt_id = _prompt_id(body.get("prompt_id"))
    number = _number(body, st.queue.next_number)
    extra_data = body.get("extra_data") or {}
    if not isinstance(extra_data, dict):
        raise ApiError(400, "invalid_request", "'extra_data' must be an object", node_errors={})
    extra_data = dict(extra_data)
    if "client_id" in body:
        extra_data["client_id"] = body["client_id"]
    targets = body.get("partial_execution_targets")
    if targets is not None and not (isinstance(targets, list)
                                    and all(isinstance(t, str) for t in targets)):
        raise ApiError(400, "invalid_request", "'partial_execution_targets' must be a list "
                       "of node ids", node_errors={})
    session = await st.runtime.get_session()
    vp = await _validate(session.executor, prompt, targets)
    if prompt_id in st.queue:  # checked after the awaits, so no other request slips in
        raise ApiError(400, "duplicate_prompt_id", f"prompt {prompt_id!r} is already queued",
                       node_errors={})
    item = QueueItem(number, prompt_id, prompt, extra_data, list(vp.outputs), validated=vp)
    try:
        st.queue.put(item)
    except (StorageError, OSError, RuntimeError) as exc:
        raise ApiError(503, "queue_unavailable", f"the prompt could not be queued: {exc}",
                       node_errors={}) from None
    except Exception as exc:  # sqlite3 errors: disk full, database locked...
        raise ApiError(503, "queue_unavailable", f"the prompt could not be stored: "
                       f"{type(exc).__name__}", node_errors={}) from None
    return json_response({"prompt_id": prompt_id, "number": number, "node_errors": {}})


async def _validate(executor: Any, prompt: dict[str, Any],
                    targets: list[str] | None) -> Any:
    try:
        if len(prompt) <= INLINE_VALIDATION_NODES:
            return executor.validate(prompt, targets)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, executor.validate, prompt, targets)
    except PromptValidationError as exc:
        node_errors = to_node_errors(exc.issues)
        errors = [i for i in exc.issues if i.severity == "error"]
        if node_errors:
            error = ("prompt_outputs_failed_validation", "Prompt outputs failed validation")
        else:
            error = (errors[0].kind if errors else "invalid_prompt",
                     errors[0].message if errors else "the prompt is invalid")
        raise ApiError(400, *error, describe_issues(errors), node_errors=node_errors,
                       extra_info={"issues": [i.to_dict() for i in exc.issues][:200]}) from None
    except RecursionError:
        raise ApiError(400, "invalid_prompt", "the prompt is nested too deeply",
                       node_errors={}) from None


def _prompt_id(value: Any) -> str:
    if value is None:
        return str(uuid.uuid4())
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH \
            or not value.isprintable():
        raise ApiError(400, "invalid_prompt_id", "'prompt_id' must be a non-empty string of "
                       f"at most {MAX_ID_LENGTH} printable characters", node_errors={})
    return value


def _number(body: dict[str, Any], next_number: Any) -> int | float:
    if "number" not in body:
        return next_number(front=bool(body.get("front")))
    value = body["number"]
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise ApiError(400, "invalid_number", "'number' must be a finite number",
                       node_errors={})
    return value


# --- /queue ----------------------------------------------------------------------
async def get_queue(request: web.Request) -> web.Response:
    running, pending = state(request).queue.snapshot()
    return json_response({"queue_running": running, "queue_pending": pending})


async def post_queue(request: web.Request) -> web.Response:
    queue = state(request).queue
    body = await read_object(request)
    deleted = 0
    if body.get("clear"):
        deleted += queue.clear()
    if "delete" in body:
        deleted += queue.delete(_id_list(body["delete"]))
    return json_response({"deleted": deleted})


def _id_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, "invalid_request", "'delete' must be a list of prompt ids")
    return value


async def post_interrupt(request: web.Request) -> web.Response:
    body = await read_object(request, required=False)
    prompt_id = body.get("prompt_id")
    if prompt_id is not None and not isinstance(prompt_id, str):
        raise ApiError(400, "invalid_prompt_id", "'prompt_id' must be a string")
    return json_response({"interrupted": state(request).runtime.interrupt(prompt_id)})


# --- /history --------------------------------------------------------------------
async def get_history(request: web.Request) -> web.Response:
    max_items = _int_param(request, "max_items", minimum=0)
    offset = _int_param(request, "offset", minimum=-1)
    rows = state(request).storage.history(max_items, offset)
    # Entries are stored as JSON text: splice them instead of decoding and re-encoding.
    body = "{" + ",".join(f"{json.dumps(pid)}:{entry}" for pid, entry in rows) + "}"
    return web.Response(text=body, content_type="application/json")


async def get_history_item(request: web.Request) -> web.Response:
    prompt_id = request.match_info["prompt_id"]
    entry = state(request).storage.history_entry(prompt_id)
    body = "{}" if entry is None else "{" + json.dumps(prompt_id) + ":" + entry + "}"
    return web.Response(text=body, content_type="application/json")


async def post_history(request: web.Request) -> web.Response:
    storage = state(request).storage
    body = await read_object(request)
    if body.get("clear"):
        storage.delete_history()
    if "delete" in body:
        storage.delete_history(_id_list(body["delete"]))
    return json_response({})


def _int_param(request: web.Request, name: str, minimum: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer >= {minimum}")
    return min(value, 1 << 62)  # SQLite integers are 64-bit


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/prompt", get_prompt),
    ("POST", "/prompt", post_prompt),
    ("GET", "/queue", get_queue),
    ("POST", "/queue", post_queue),
    ("POST", "/interrupt", post_interrupt),
    ("GET", "/history", get_history),
    ("GET", "/history/{prompt_id}", get_history_item),
    ("POST", "/history", post_history),
]
