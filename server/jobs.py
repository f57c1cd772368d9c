"""ComfyUI's jobs API (``GET /jobs``, ``GET /jobs/{id}``): queue and history as one list,
and cancelling (``POST /jobs/{id}/cancel``, ``POST /jobs/cancel``).

Newer ComfyUI frontends (1.3x and later) read their queue and history panels from
it instead of ``/queue`` and ``/history``. A job is a prompt: ``pending`` or
``in_progress`` while queued, then ``completed``, ``failed`` or ``cancelled`` from
its history entry. Times in milliseconds.

As ComfyUI's ``get_all_jobs``: the ``status`` and ``workflow_id`` filters come first,
then queue and history are sorted together (``sort_by`` ``created_at`` or
``execution_duration``, ``sort_order`` ``desc`` or ``asc``; newest first by default),
``pagination.total`` counts every job that matches and ``offset``/``limit`` page over
them. The history's part of that is done in SQL on columns read off each entry when it
is written (:meth:`server.storage.Storage.history_job_rows`), so only the page's entries
are read.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from server.errors import ApiError, json_response
from server.routes import _id_list, _valid_id, int_param, read_object, stored
from server.state import state
from server.storage import (
    END_EVENTS,
    HISTORY_STATUSES,
    JOB_SORT_COLUMNS,
    Storage,
    entry_times,
    history_status,
    millis,
    workflow_id,
)

STATUSES = ("pending", "in_progress", *HISTORY_STATUSES)
MAX_LIMIT = 1000
MAX_OFFSET = 999_999_999  # nine digits (_bounded); never clamped below the real count
SORT_ORDERS = ("desc", "asc")
# A queued job is newer than any history row with the same sort keys: the queue's rows
# sort as if their history seq were past the last one.
_QUEUED_SEQ = 1 << 63


def _queued(item: list[Any], status: str) -> dict[str, Any]:
    number, prompt_id, _prompt, extra, _outputs = item[:5]
    extra = extra if isinstance(extra, dict) else {}
    return {"id": prompt_id, "status": status, "priority": number,
            "create_time": extra.get("create_time") or 0, "outputs_count": 0,
            "previewable_outputs_count": 0, "workflow_id": workflow_id(extra)}


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
    times = entry_times(entry)  # as the history's sort columns read them
    status = history_status(entry)  # as stored in the history's status column
    error = None
    for event, data in status_info.get("messages") or []:
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
        "execution_error": error, "workflow_id": workflow_id(extra),
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


def _choice(request: web.Request, name: str, choices: tuple[str, ...] | list[str]) -> str:
    """A query word among ``choices`` (any case, as ComfyUI's); absent: the first."""
    value = request.query.get(name, "").strip().lower() or choices[0]
    if value not in choices:
        raise ApiError(400, "invalid_parameter", f"{name} must be one of "
                       f"{', '.join(choices)} (got {value[:100]!r})")
    return value


def _sort_key(job: dict[str, Any], sort_by: str) -> tuple[int, int, int]:
    """A queued job's place in /jobs' order, as :meth:`Storage.history_job_rows` sorts
    the history's: the sort field (a queued job has run for 0 ms), then create_time."""
    created = millis(job.get("create_time")) or 0
    return (created if sort_by == "created_at" else 0), created, _QUEUED_SEQ


async def list_jobs(request: web.Request) -> web.Response:
    st = state(request)
    raw = request.query.get("status", "")  # none or empty: every status, as ComfyUI's
    wanted = [s.strip().lower() for s in raw.split(",") if s.strip()] if raw else STATUSES
    if unknown := [s for s in wanted if s not in STATUSES]:
        raise ApiError(400, "invalid_status", f"unknown job status {unknown[0]!r}; one of "
                       f"{', '.join(STATUSES)}")
    sort_by = _choice(request, "sort_by", list(JOB_SORT_COLUMNS))
    descending = _choice(request, "sort_order", SORT_ORDERS) == "desc"
    workflow = request.query.get("workflow_id") or None  # empty: no filter, as ComfyUI's
    limit = _bounded(request, "limit", 200, MAX_LIMIT)
    offset = _bounded(request, "offset", 0, MAX_OFFSET)
    running, pending = st.queue.snapshot()
    queued = [_queued(i, "in_progress") for i in running] if "in_progress" in wanted else []
    if "pending" in wanted:
        queued += [_queued(i, "pending") for i in pending]
    if workflow is not None:
        queued = [job for job in queued if job["workflow_id"] == workflow]
    # stable: equal keys keep the queue's order (running, then pending)
    queued.sort(key=lambda job: _sort_key(job, sort_by), reverse=descending)
    finished = [s for s in HISTORY_STATUSES if s in wanted]
    history_total, page = 0, []
    if finished:
        history_total, page = await asyncio.get_running_loop().run_in_executor(
            None, _history_page, st.storage,
            None if len(finished) == len(HISTORY_STATUSES) else finished,
            queued, sort_by, descending, workflow, limit, offset)
    elif limit:
        page = queued[offset:offset + limit]
    total = len(queued) + history_total
    return json_response({"jobs": page, "pagination": {
        "offset": offset, "limit": limit, "total": total,
        "has_more": offset + len(page) < total}})


def _history_page(storage: Storage, statuses: list[str] | None, queued: list[dict[str, Any]],
                  sort_by: str, descending: bool, workflow: str | None, limit: int,
                  offset: int) -> tuple[int, list[dict[str, Any]]]:
    """(matching history entries, the page of queue and history merged in order).

    The page's history rows lie among the history's ``offset - len(queued)`` ..
    ``offset + limit`` in its own order (each queued job ahead of a row moves it back by
    one), so only those rows' keys are read, and only the page's entries as JSON, one
    at a time: a page of big prompts never holds more than one of them as text.
    """
    start = max(offset - len(queued), 0)
    total, rows = storage.history_job_rows(statuses, offset + limit - start, start,
                                           sort_by=sort_by, descending=descending,
                                           workflow=workflow)
    merged: list[tuple[tuple[int, int, int], dict[str, Any] | str]] = [
        (_sort_key(job, sort_by), job) for job in queued]
    skipped = 0  # queued jobs ahead of the first row read, when rows were skipped
    if start and rows:
        head = rows[0][1:]
        ahead = [(key > head) if descending else (key < head) for key, _ in merged]
        skipped = sum(ahead)
        merged = [item for item, before in zip(merged, ahead, strict=True) if not before]
    elif start:  # every history row lies before the page, so do the queued jobs
        return total, []
    merged += [(row[1:], row[0]) for row in rows]
    merged.sort(key=lambda item: item[0], reverse=descending)
    first = offset - start - skipped  # where the page starts in ``merged``
    jobs = []
    for _key, item in merged[first:first + limit]:
        if isinstance(item, dict):
            jobs.append(item)
        elif (entry := storage.history_value(item)) is not None:  # else deleted meanwhile,
            jobs.append(_finished(item, entry, full=False))  # or damaged (logged)
    return total, jobs


async def get_job(request: web.Request) -> web.Response:
    st = state(request)
    job_id = request.match_info["job_id"]
    running, pending = st.queue.snapshot()
    for items, status in ((running, "in_progress"), (pending, "pending")):
        for item in items:
            if item[1] == job_id:
                return json_response(_queued(item, status))
    entry = await asyncio.get_running_loop().run_in_executor(
        None, st.storage.history_value, job_id)
    if entry is None:  # unknown, or damaged (logged, and left out of the lists too)
        raise ApiError(404, "not_found", f"no job {job_id[:200]!r}")
    return json_response(_finished(job_id, entry, full=True))


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
    with stored(request, "the job could not be cancelled"):
        result = _cancel(request, job_id)
    return json_response({"job_id": job_id, "result": result})


async def cancel_jobs(request: web.Request) -> web.Response:
    """``POST /jobs/cancel`` with ``{"job_ids": [...]}``: every id must be a job that is
    queued, running or in the history (else 404 and nothing is cancelled)."""
    body = await read_object(request)
    ids = _id_list(body.get("job_ids"), "job_ids")
    st = state(request)
    running, pending = st.queue.snapshot()
    queued = {item[1] for item in running + pending}
    unknown = [i for i in ids if i not in queued and not st.storage.in_history(i)]
    if unknown:
        raise ApiError(404, "not_found", f"no job {unknown[0][:200]!r}"
                       + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
                       extra_info={"unknown": unknown[:100]})
    with stored(request, "the jobs could not be cancelled"):
        results = {i: _cancel(request, i) for i in ids}
    return json_response({"results": results})


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/jobs", list_jobs),
    ("POST", "/jobs/cancel", cancel_jobs),
    ("GET", "/jobs/{job_id}", get_job),
    ("POST", "/jobs/{job_id}/cancel", cancel_job),
]
