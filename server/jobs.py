"""ComfyUI's jobs API (``GET /jobs``, ``GET /jobs/{id}``): queue and history as one list,
and cancelling (``POST /jobs/{id}/cancel``, ``POST /jobs/cancel``).

Newer ComfyUI frontends (1.3x and later) read their queue and history panels from
it instead of ``/queue`` and ``/history``. A job is a prompt: ``pending`` or
``in_progress`` while queued, then ``completed``, ``failed`` or ``cancelled`` from
its history entry. Newest first; times in milliseconds.

As ComfyUI's ``get_all_jobs``: the status filter comes first, ``pagination.total``
counts every job that matches it, and ``offset``/``limit`` page over those. The
history's part of that is done in SQL on its ``status`` column
(:meth:`server.storage.Storage.history_jobs`), so only the page's entries are read.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from server.errors import ApiError, json_response
from server.routes import _id_list, _valid_id, int_param, read_object
from server.state import state
from server.storage import END_EVENTS, HISTORY_STATUSES, Storage, history_status

STATUSES = ("pending", "in_progress", *HISTORY_STATUSES)
MAX_LIMIT = 1000
MAX_OFFSET = 999_999_999  # nine digits (_bounded); never clamped below the real count


def _queued(item: list[Any], status: str) -> dict[str, Any]:
    number, prompt_id, _prompt, extra, _outputs = item[:5]
    extra = extra if isinstance(extra, dict) else {}
    return {"id": prompt_id, "status": status, "priority": number,
            "create_time": extra.get("create_time") or 0, "outputs_count": 0,
            "previewable_outputs_count": 0, "workflow_id": _workflow_id(extra)}


def _workflow_id(extra: dict[str, Any]) -> str | None:
    # extra_data is the client's: entries stored before /prompt checked extra_pnginfo
    # may hold any JSON there, and one such entry must not break the whole listing
    pnginfo = extra.get("extra_pnginfo")
    workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
    value = workflow.get("id") if isinstance(workflow, dict) else None
    return value if isinstance(value, str) else None


def _job_error(data: dict[str, Any]) -> dict[str, Any]:
    """An ``execution_error`` as a job shows it, with the fields ComfyUI's frontend
    requires in their types (its schema refuses the whole job list over one): a failure
    of the whole prompt (no worker, a restart) names no node, so its id is ""."""
    def text(key: str) -> str:
        value = data.get(key)
        return value if isinstance(value, str) else "" if value is None else str(value)

    trace = data.get("traceback")
    return {
        **data,
        "node_id": text("node_id"), "node_type": text("node_type"),
        "exception_message": text("exception_message"),
        "exception_type": text("exception_type"),
        "traceback": [str(line) for line in trace] if isinstance(trace, list) else [],
        "current_inputs": data.get("current_inputs")
        if isinstance(data.get("current_inputs"), dict) else {},
        "current_outputs": data.get("current_outputs")
        if isinstance(data.get("current_outputs"), dict) else {},
    }


def _finished(prompt_id: str, entry: dict[str, Any], full: bool) -> dict[str, Any]:
    number, _pid, _prompt, extra, _outputs = (entry.get("prompt") or [0, "", {}, {}, []])[:5]
    extra = extra if isinstance(extra, dict) else {}
    status_info = entry.get("status") or {}
    times: dict[str, int] = {}
    status = history_status(entry)  # as stored in the history's status column
    error = None
    for event, data in status_info.get("messages") or []:
        stamp = (data or {}).get("timestamp") if isinstance(data, dict) else None
        if isinstance(stamp, int | float):
            times[event] = int(stamp)
        if event == "execution_error" and isinstance(data, dict):
            error = _job_error(data)
    outputs = entry.get("outputs") or {}
    previews = [{**img, "nodeId": node_id, "mediaType": "images"}
                for node_id, out in outputs.items() if isinstance(out, dict)
                for img in out.get("images") or [] if isinstance(img, dict)]
    job = {
        "id": prompt_id, "status": status, "priority": number,
        "create_time": extra.get("create_time") or times.get("execution_start", 0),
        "execution_start_time": times.get("execution_start"),
        "execution_end_time": next((times[e] for e in END_EVENTS if e in times), None),
        "preview_output": previews[0] if previews else None,
        "outputs_count": sum(len(v) for out in outputs.values() if isinstance(out, dict)
                             for v in out.values() if isinstance(v, list)),
        "previewable_outputs_count": len(previews),
        "execution_error": error, "workflow_id": _workflow_id(extra),
    }
    if full:
        job["outputs"] = outputs
        job["workflow"] = {"prompt": entry.get("prompt", [None, None, {}])[2],
                           "extra_data": extra}
    return job


def _bounded(request: web.Request, name: str, default: int, top: int) -> int:
    """A non-negative query integer, capped at ``top`` as /history caps its own."""
    value = int_param(request, name, minimum=0)
    return default if value is None else min(value, top)


async def list_jobs(request: web.Request) -> web.Response:
    st = state(request)
    raw = request.query.get("status", "")  # none or empty: every status, as ComfyUI's
    wanted = [s.strip().lower() for s in raw.split(",") if s.strip()] if raw else STATUSES
    if unknown := [s for s in wanted if s not in STATUSES]:
        raise ApiError(400, "invalid_status", f"unknown job status {unknown[0]!r}; one of "
                       f"{', '.join(STATUSES)}")
    limit = _bounded(request, "limit", 200, MAX_LIMIT)
    offset = _bounded(request, "offset", 0, MAX_OFFSET)
    # Filter, count, then page: the queue's jobs (in progress, then pending) come before
    # the history's (newest first), as they always did.
    running, pending = st.queue.snapshot()
    queued = [_queued(i, "in_progress") for i in running] if "in_progress" in wanted else []
    if "pending" in wanted:
        queued += [_queued(i, "pending") for i in pending]
    page = queued[offset:offset + limit]
    history_total = 0
    finished = [s for s in HISTORY_STATUSES if s in wanted]
    if finished:
        history_total, jobs = await asyncio.get_running_loop().run_in_executor(
            None, _history_page, st.storage,
            None if len(finished) == len(HISTORY_STATUSES) else finished,
            limit - len(page), max(offset - len(queued), 0))
        page += jobs
    total = len(queued) + history_total
    return json_response({"jobs": page, "pagination": {
        "offset": offset, "limit": limit, "total": total,
        "has_more": offset + len(page) < total}})


def _history_page(storage: Storage, statuses: list[str] | None, limit: int, offset: int
                  ) -> tuple[int, list[dict[str, Any]]]:
    """(matching history entries, the page's jobs): entries read one at a time, so a
    page of big prompts never holds more than one of them as text."""
    total, ids = storage.history_jobs(statuses, limit, offset)
    jobs = []
    for prompt_id in ids:
        text = storage.history_entry(prompt_id)
        if text is not None:  # deleted meanwhile
            jobs.append(_finished(prompt_id, json.loads(text), full=False))
    return total, jobs


async def get_job(request: web.Request) -> web.Response:
    st = state(request)
    job_id = request.match_info["job_id"]
    running, pending = st.queue.snapshot()
    for items, status in ((running, "in_progress"), (pending, "pending")):
        for item in items:
            if item[1] == job_id:
                return json_response(_queued(item, status))
    text = st.storage.history_entry(job_id)
    if text is None:
        raise ApiError(404, "not_found", f"no job {job_id[:200]!r}")
    return json_response(_finished(job_id, json.loads(text), full=True))


def _cancel(request: web.Request, job_id: str) -> str:
    """Cancel one job: a pending one leaves the queue, a running one is interrupted;
    a finished or unknown one is left as it is. Returns what was done."""
    st = state(request)
    if st.queue.delete([job_id]):
        return "cancelled"
    running, _ = st.queue.snapshot()
    if any(item[1] == job_id for item in running):
        return "interrupted" if st.runtime.interrupt(job_id) else "unchanged"
    return "unchanged"


async def cancel_job(request: web.Request) -> web.Response:
    """``POST /jobs/{id}/cancel`` (the job queue panel's Cancel): 200 also when there
    is nothing to do (the job has finished, or is not known), as ComfyUI answers."""
    job_id = _valid_id(request.match_info["job_id"], "job_id")
    return json_response({"job_id": job_id, "result": _cancel(request, job_id)})


async def cancel_jobs(request: web.Request) -> web.Response:
    """``POST /jobs/cancel`` with ``{"job_ids": [...]}``: every id must be a job that is
    queued, running or in the history (else 404 and nothing is cancelled)."""
    body = await read_object(request)
    ids = _id_list(body.get("job_ids"), "job_ids")
    st = state(request)
    running, pending = st.queue.snapshot()
    queued = {item[1] for item in running + pending}
    unknown = [i for i in ids if i not in queued and st.storage.history_entry(i) is None]
    if unknown:
        raise ApiError(404, "not_found", f"no job {unknown[0][:200]!r}"
                       + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
                       extra_info={"unknown": unknown[:100]})
    return json_response({"results": {i: _cancel(request, i) for i in ids}})


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/jobs", list_jobs),
    ("POST", "/jobs/cancel", cancel_jobs),
    ("GET", "/jobs/{job_id}", get_job),
    ("POST", "/jobs/{job_id}/cancel", cancel_job),
]
