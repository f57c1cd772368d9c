"""Prompt, queue, history and interrupt routes (ComfyUI's protocol)."""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from engine.comfy_workflow import is_ui_workflow
from engine.issues import short_repr
from engine.validation import Issue, PromptValidationError, plain_issues, to_node_errors
from engine.workflow import WorkflowFormatError, from_object, is_document
from server.errors import ApiError, json_response
from server.prompt_queue import DuplicatePromptId, QueueItem
from server.state import state
from server.storage import SENSITIVE_EXTRA_DATA_KEYS, StorageError, damage_hint, is_damaged

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 200
MAX_NODE_ID_CHARS = 256  # a node id of a prompt
MAX_ID_LIST = 10_000  # ids per delete list (ComfyUI keeps 10000 history entries)
MAX_NUMBER = 2**53  # |number| of a queued prompt
MAX_REPORTED_ISSUES = 100  # validation errors detailed in a 400; the rest are counted
DEFAULT_HISTORY_ITEMS = 1000  # GET /history without max_items: the newest this many
MAX_HISTORY_BYTES = 64 << 20  # a /history answer stops adding entries beyond this
INLINE_VALIDATION_NODES = 64  # bigger prompts are validated off the event loop


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """JSON number literals such as 1e999 overflow to inf: refuse them at the door."""
    value = float(text)
    if value in (_INF, -_INF):
        raise ValueError(f"the number {text[:50]} is out of range")
    return value


_INF = float("inf")
GC_PAUSE_BYTES = 1 << 20  # bodies parsed with the cyclic GC paused


def strict_loads(raw: bytes) -> Any:
    """Strict JSON; a big body is parsed with the GC paused.

    Parsing a 10 MB prompt creates a million containers, and each gen-2 collection
    they trigger walks the whole heap: that tripled the parse's time on the event
    loop. JSON makes no reference cycles; others made meanwhile are collected later.
    """
    pause = len(raw) > GC_PAUSE_BYTES and gc.isenabled()
    if pause:
        gc.disable()
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    finally:
        if pause:
            gc.enable()


async def read_json(request: web.Request, *, required: bool = True, **fields: Any) -> Any:
    """The body as JSON whatever its Content-Type (as ComfyUI); 400 if it is not.

    ``fields`` join the error body (``node_errors`` for /prompt, whose clients read it).
    """
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "request_entity_too_large", "the request body is too large",
                       extra_info={"limit_bytes": request.client_max_size}, **fields) from None
    if not raw.strip():
        if required:
            raise ApiError(400, "invalid_json", "the request body is empty; expected JSON",
                           **fields)
        return {}
    try:
        return strict_loads(raw)
    except (ValueError, RecursionError) as exc:  # includes UnicodeDecodeError
        raise ApiError(400, "invalid_json", "the request body is not valid JSON",
                       str(exc)[:500], **fields) from None


async def read_object(request: web.Request, *, required: bool = True,
                      **fields: Any) -> dict[str, Any]:
    body = await read_json(request, required=required, **fields)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "the request body must be a JSON object",
                       **fields)
    return body


@contextmanager
def stored(request: web.Request, what: str, type_: str = "queue_unavailable",
           **fields: Any) -> Iterator[None]:
    """A change of the queue or history that the database refuses (a full disk, a
    locked, read-only or damaged file) as 503 ``type_``, with ``what`` and the reason:
    the server is fine, the change can be made again once the cause is gone."""
    try:
        yield
    except ApiError:
        raise
    except Exception as exc:  # sqlite3 errors: disk full, database locked...
        reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        if is_damaged(exc):
            reason += f"; {damage_hint(state(request).storage.path, running=True)}"
        log.warning("%s %s: %s: %s", request.method, request.path, what, reason)
        raise ApiError(503, type_, f"{what}: {reason}", **fields) from None


# --- /prompt ---------------------------------------------------------------------
async def get_prompt(request: web.Request) -> web.Response:
    return json_response({"exec_info": {"queue_remaining": state(request).queue.remaining()}})


async def post_prompt(request: web.Request) -> web.Response:
    try:
        return await _post_prompt(request)
    except ApiError as exc:
        # ComfyUI's clients read node_errors from every refusal (its frontend:
        # error.response.node_errors), a 503 while the server starts included
        exc.body.setdefault("node_errors", {})
        raise


async def _post_prompt(request: web.Request) -> web.Response:
    st = state(request)
    body = await read_object(request, node_errors={})
    if body.get("prompt") is None:
        raise ApiError(400, "no_prompt", "No prompt provided", "the body has no 'prompt'",
                       node_errors={})
    prompt = _api_prompt(body["prompt"])
    prompt_id = _prompt_id(body.get("prompt_id"))
    number = _number(body, st.queue.next_number)
    extra_data = _extra_data(body)
    targets = body.get("partial_execution_targets")
    if targets is not None:
        targets = _id_list(targets, "partial_execution_targets", node_errors={})
    validator = await st.runtime.get_validator()
    vp, rejected = await _validate(validator, prompt, targets)
    if prompt_id in st.queue:  # checked after the awaits, so no other request slips in
        raise ApiError(400, "duplicate_prompt_id", f"prompt {prompt_id!r} is already queued",
                       node_errors={})
    if body.get("prompt_id") is not None and st.storage.in_history(prompt_id):
        # its run would replace the entry, and the earlier run's outputs lose their record
        raise ApiError(400, "duplicate_prompt_id", f"prompt {prompt_id!r} is already in the "
                       "history: use a new prompt_id, or delete the entry first (POST "
                       "/history {\"delete\": [id]})", node_errors={})
    item = QueueItem(number, prompt_id, prompt, extra_data, list(vp.outputs))
    with stored(request, "the prompt could not be stored", node_errors={}):
        try:
            await st.queue.submit(item)
        except DuplicatePromptId:
            raise ApiError(400, "duplicate_prompt_id", f"prompt {prompt_id!r} is already "
                           "queued", node_errors={}) from None
        except (StorageError, OSError, RuntimeError) as exc:
            raise ApiError(503, "queue_unavailable", f"the prompt could not be queued: {exc}",
                           node_errors={}) from None
    reply: dict[str, Any] = {"prompt_id": prompt_id, "number": number, "node_errors": {}}
    if rejected is not None:  # as ComfyUI: the valid outputs run, the others are named
        log.warning("prompt %s: output(s) left out:\n%s", prompt_id,
                    rejected.body["error"]["details"])
        reply["node_errors"] = rejected.body["node_errors"]
    if vp.warnings:  # e.g. an unknown embedding:name, dropped as ComfyUI does
        shown = vp.warnings[:MAX_REPORTED_ISSUES]
        for issue in shown:
            log.warning("prompt %s, node %s: %s", prompt_id, issue.node_id, issue.message)
        reply["warnings"] = [i.to_dict() for i in shown]
    return json_response(reply)


def _api_prompt(value: Any) -> dict[str, Any]:
    """``prompt`` of a /prompt body: an API prompt as it is, or one of our documents.

    Never unwrapped further, as :func:`engine.workflow.from_object` does with a whole
    request body: a body inside the body is refused, as ComfyUI refuses it.
    """
    if is_ui_workflow(value):
        raise ApiError(400, "invalid_prompt", "this is a UI-format workflow (nodes and "
                       "links, as a canvas saves it): /prompt takes the API format. Export "
                       "it with the canvas's \"Export API\" (ComfyUI's \"Export (API)\"), "
                       "convert it with POST /workflow/convert, or run the file with "
                       "`steerflow run`", node_errors={})
    try:
        if is_document(value):
            return from_object(value)[0]
    except WorkflowFormatError as exc:
        raise ApiError(400, "invalid_prompt", str(exc), node_errors={}) from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_prompt", "a workflow must be a JSON object",
                       node_errors={})
    prompt = {str(k): v for k, v in value.items()}
    for node_id in prompt:  # ids go into logs and every event: a newline forged log lines
        if len(node_id) > MAX_NODE_ID_CHARS or not node_id.isprintable():
            raise ApiError(400, "invalid_prompt", f"node id {short_repr(node_id)} is not a "
                           f"node id: use up to {MAX_NODE_ID_CHARS} printable characters "
                           "(ComfyUI's are numbers such as \"3\" or \"12:5\")",
                           node_errors={})
    return prompt


def _extra_data(body: dict[str, Any]) -> dict[str, Any]:
    """``extra_data`` checked, with the body's ``client_id`` and ComfyUI's ``create_time``.

    A ``client_id`` routes the prompt's events, and ``extra_pnginfo`` is written into
    saved images (and read by /jobs), so both are checked here rather than failing a
    run later. ComfyUI's comfy.org credentials are dropped: Steerflow has no use for
    them, and /queue, /history and /jobs show extra_data to every client.
    """
    extra = body.get("extra_data") or {}
    if not isinstance(extra, dict):
        raise ApiError(400, "invalid_request", "'extra_data' must be an object", node_errors={})
    extra = {k: v for k, v in extra.items() if k not in SENSITIVE_EXTRA_DATA_KEYS}
    if body.get("client_id") is not None:
        extra["client_id"] = body["client_id"]
    if extra.get("client_id") is not None:
        extra["client_id"] = _valid_id(extra["client_id"], "client_id", node_errors={})
    pnginfo = extra.get("extra_pnginfo")
    if pnginfo is not None and not isinstance(pnginfo, dict):
        raise ApiError(400, "invalid_request", "'extra_data.extra_pnginfo' must be an object "
                       "(the PNG text chunks by name, e.g. {\"workflow\": {...}})",
                       node_errors={})
    extra["create_time"] = int(time.time() * 1000)  # as ComfyUI: /jobs reports it
    return extra


async def _validate(validator: Any, prompt: dict[str, Any],
                    targets: list[str] | None) -> tuple[Any, ApiError | None]:
    """The validated prompt and the refusal of the outputs left out (partial execution);
    raises the refusal of the whole prompt. A large prompt is validated off the event
    loop, and its refusal is built there too: naming each bad node's dependent outputs
    walks the graph (a 250 000-node chain's kept the server from answering for 50 s)."""
    if len(prompt) <= INLINE_VALIDATION_NODES:
        outcome = _validated(validator, prompt, targets)
    else:
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(
            None, functools.partial(_validated, validator, prompt, targets))
    if isinstance(outcome, ApiError):
        raise outcome
    return outcome


def _validated(validator: Any, prompt: dict[str, Any], targets: list[str] | None
               ) -> tuple[Any, ApiError | None] | ApiError:
    try:
        vp = validator.validate(prompt, targets, partial=True)
    except PromptValidationError as exc:
        return _validation_error(exc.issues, exc.dependent_outputs)
    except RecursionError:
        return ApiError(400, "invalid_prompt", "the prompt is nested too deeply",
                        node_errors={})
    rejected = (None if vp.rejected is None else
                _validation_error(vp.rejected.issues, vp.rejected.dependent_outputs))
    return vp, rejected


_PROMPT_WIDE_KINDS = frozenset({"unknown_node_type", "no_output_node", "missing_class_type"})


def _validation_error(issues: list[Issue],
                      dependent_outputs: Callable[[str], list[str]] | None = None) -> ApiError:
    """The 400 for an invalid prompt, capped at the first MAX_REPORTED_ISSUES errors.

    A 200k-node prompt with an error per node made a 55 MB body, built on the event
    loop; the counts say how much was left out.
    """
    errors = [i for i in issues if i.severity == "error"]
    shown = errors[:MAX_REPORTED_ISSUES]
    warnings = [i for i in issues if i.severity != "error"][:MAX_REPORTED_ISSUES - len(shown)]
    unknown = [i for i in shown if i.kind == "unknown_node_type"]
    # A node-less kind in node_errors would be a "node" that is not in the prompt (a
    # partial_execution_targets id): ComfyUI reports those in the error alone.
    node_errors = to_node_errors([i for i in shown if i.kind not in _PROMPT_WIDE_KINDS],
                                 dependent_outputs)
    no_class = [i for i in shown if i.kind == "missing_class_type"]
    if no_class:  # ComfyUI's message and details
        error = ("invalid_prompt", "Cannot execute because a node is missing the class_type "
                 "property.")
    elif unknown:  # as ComfyUI: the prompt as a whole, its front end names the missing nodes
        error = ("invalid_prompt", f"Cannot execute because node {unknown[0].class_type} "
                 "does not exist.")
    elif not node_errors and any(i.kind == "no_output_node" for i in errors):
        # ComfyUI's type and message; the details say which nodes and what to do
        error = ("prompt_no_outputs", "Prompt has no outputs")
    elif node_errors:
        error = ("prompt_outputs_failed_validation", "Prompt outputs failed validation")
    else:
        error = (errors[0].kind if errors else "invalid_prompt",
                 errors[0].message if errors else "the prompt is invalid")
    details = plain_issues(shown)  # shown by ComfyUI's front end as they are
    extra: dict[str, Any] = {"issues": [i.to_dict() for i in shown + warnings],
                             "error_count": len(errors), "issue_count": len(issues)}
    if len(errors) > len(shown):
        details += f"\n... and {len(errors) - len(shown)} more error(s)"
        extra["errors_omitted"] = len(errors) - len(shown)
        extra["nodes_with_errors"] = len({i.node_id for i in errors if i.node_id is not None})
    return ApiError(400, *error, details, node_errors=node_errors, extra_info=extra)


def _valid_id(value: Any, name: str, type_: str = "invalid_request", **fields: Any) -> str:
    """An id (prompt, client, node) is a non-empty printable string of bounded length."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH \
            or not value.isprintable():
        raise ApiError(400, type_, f"'{name}' must be a non-empty string of at most "
                       f"{MAX_ID_LENGTH} printable characters", **fields)
    return value


def _prompt_id(value: Any) -> str:
    if value is None:
        return str(uuid.uuid4())
    if (isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**MAX_ID_LENGTH) \
            or (isinstance(value, float) and math.isfinite(value)):
        value = str(value)  # ComfyUI takes str(prompt_id): a client's number is its text
    return _valid_id(value, "prompt_id", "invalid_prompt_id", node_errors={})


def _number(body: dict[str, Any], next_number: Any) -> int | float:
    """The queue position: ``number`` as given (bounded), else the next one (a truthy
    ``front``: before every pending prompt), as in ComfyUI.

    ComfyUI takes ``float(number)``, so a numeric string ("5") and a boolean are numbers
    there and here; any value must be finite and within ±2**53.
    """
    value = body.get("number")
    if value is None:
        # ComfyUI: ``if json_data['front']`` — any truthy JSON value
        return next_number(front=bool(body.get("front")))
    if isinstance(value, bool):
        value = int(value)
    elif isinstance(value, str):
        value = _numeric_string(value)
    # Type first, then plain comparisons: math.isfinite(10**400) raises OverflowError.
    # The bound keeps numbers exact in SQLite's REAL and in JavaScript, and far from
    # the 64-bit limit, so the numbering continued after a restart never overflows.
    if not isinstance(value, int | float) or not -MAX_NUMBER <= value <= MAX_NUMBER:
        raise ApiError(400, "invalid_number", "'number' must be a finite number from "
                       "-2**53 to 2**53", node_errors={})
    return value


MAX_NUMBER_TEXT = 64  # characters of a numeric string (digits of 2**53: 16)


def _numeric_string(text: str) -> int | float | None:
    """What ``float(text)`` reads, as an int when it is one; None if it is not a number.
    Integers are parsed exactly ("9007199254740993" is not rounded into range)."""
    text = text.strip()
    if not text or len(text) > MAX_NUMBER_TEXT:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else value  # nan/inf: caught by the bound


# --- /queue ----------------------------------------------------------------------
async def get_queue(request: web.Request) -> web.Response:
    running, pending = state(request).queue.snapshot()
    return json_response({"queue_running": running, "queue_pending": pending})


async def post_queue(request: web.Request) -> web.Response:
    queue = state(request).queue
    body = await read_object(request)
    ids = _id_list(body["delete"]) if "delete" in body else None
    clear = _flag(body, "clear")
    deleted = 0
    with stored(request, "the queue could not be changed"):
        if clear:
            deleted += queue.clear()
        if ids is not None:
            deleted += queue.delete(ids)
    return json_response({"deleted": deleted})


def _flag(body: dict[str, Any], key: str, error: str = "invalid_request") -> bool:
    """A true/false field, absent meaning false. Strict where ComfyUI reads truthiness:
    ``{"clear": "false"}`` must not wipe the whole history."""
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise ApiError(400, error, f"'{key}' must be true or false, not {type(value).__name__}")
    return value


def _id_list(value: Any, name: str = "delete", **fields: Any) -> list[str]:
    """A bounded list of ids (see :func:`_valid_id`)."""
    if not isinstance(value, list) or len(value) > MAX_ID_LIST:
        raise ApiError(400, "invalid_request", f"'{name}' must be a list of at most "
                       f"{MAX_ID_LIST} ids", **fields)
    for item in value:
        _valid_id(item, name + "[]", **fields)
    return value


async def post_interrupt(request: web.Request) -> web.Response:
    body = await read_object(request, required=False)
    prompt_id = body.get("prompt_id")
    if prompt_id is not None:
        _valid_id(prompt_id, "prompt_id", "invalid_prompt_id")
    return json_response({"interrupted": state(request).runtime.interrupt(prompt_id)})


async def post_free(request: web.Request) -> web.Response:
    """ComfyUI's ``/free``: ``unload_models`` moves the workers' cached models off the
    accelerator (the outputs stay cached), ``free_memory`` drops every cached output and
    the allocators' free blocks; each worker does it between prompts (a running prompt
    keeps what it uses)."""
    body = await read_object(request, required=False)
    flags = {key: _flag(body, key, "invalid_free") for key in ("unload_models", "free_memory")}
    if any(flags.values()):
        state(request).runtime.free(**flags)
    return web.Response(status=200)


# --- /history --------------------------------------------------------------------
async def get_history(request: web.Request) -> web.Response:
    """ComfyUI's paging (``max_items``, ``offset``), capped: without ``max_items`` the
    newest DEFAULT_HISTORY_ITEMS, and never much more than MAX_HISTORY_BYTES."""
    max_items = int_param(request, "max_items", minimum=0)
    offset = int_param(request, "offset", minimum=-1)
    if max_items is None:
        max_items = DEFAULT_HISTORY_ITEMS
    # Off the event loop: an entry read for the first time since the start is checked
    # (parsed once), and a damaged one left out (Storage.history).
    rows = await asyncio.get_running_loop().run_in_executor(None, functools.partial(
        state(request).storage.history, max_items, offset, max_bytes=MAX_HISTORY_BYTES))
    # Entries are stored as JSON text: splice them instead of decoding and re-encoding.
    body = "{" + ",".join(f"{json.dumps(pid)}:{entry}" for pid, entry in rows) + "}"
    return web.Response(text=body, content_type="application/json")


async def get_history_item(request: web.Request) -> web.Response:
    prompt_id = request.match_info["prompt_id"]
    entry = await asyncio.get_running_loop().run_in_executor(
        None, state(request).storage.history_entry, prompt_id)
    body = "{}" if entry is None else "{" + json.dumps(prompt_id) + ":" + entry + "}"
    return web.Response(text=body, content_type="application/json")


async def post_history(request: web.Request) -> web.Response:
    storage = state(request).storage
    body = await read_object(request)
    ids = _id_list(body["delete"]) if "delete" in body else None
    clear = _flag(body, "clear")
    with stored(request, "the history could not be changed", "history_unavailable"):
        if clear:
            storage.delete_history()
        if ids is not None:
            storage.delete_history(ids)
    return json_response({})


def int_param(request: web.Request, name: str, minimum: int) -> int | None:
    """A plain decimal query integer (no "1e3", "5_000" or 5000-digit strings)."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    digits = raw[1:] if raw.startswith("-") else raw
    value = int(raw) if digits.isascii() and digits.isdigit() and len(digits) <= 30 \
        else minimum - 1
    if value < minimum:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer >= {minimum}")
    return min(value, 1 << 62)  # SQLite integers are 64-bit


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/prompt", get_prompt),
    ("POST", "/prompt", post_prompt),
    ("GET", "/queue", get_queue),
    ("POST", "/queue", post_queue),
    ("POST", "/interrupt", post_interrupt),
    ("POST", "/free", post_free),
    ("GET", "/history", get_history),
    ("GET", "/history/{prompt_id}", get_history_item),
    ("POST", "/history", post_history),
]
