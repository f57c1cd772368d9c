"""Defects an outside server drill found (D3, D4, D6, D7 and the reply-shape table),
each checked against what ComfyUI's server does."""

from __future__ import annotations

import io
import json
import logging
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from server.files import MAX_NAME_BYTES, fit_name, sanitize_filename
from server.storage import Storage, history_status
from tests.server.helpers import Http, LiveServer, chain, recv_until, slow, wait_history


def png(color: tuple[int, int, int] = (1, 2, 3)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def form(data: bytes, filename: str = "pic.png", **fields: str) -> aiohttp.FormData:
    body = aiohttp.FormData()
    body.add_field("image", data, filename=filename, content_type="image/png")
    for key, value in fields.items():
        body.add_field(key, value)
    return body


def entry(i: int, status: str) -> dict[str, Any]:
    """A history entry as the runtime writes it, ending in ``status``."""
    end = {"completed": ("success", "execution_success"),
           "failed": ("error", "execution_error"),
           "cancelled": ("error", "execution_interrupted")}[status]
    return {"prompt": [i, f"job-{i}", {}, {"create_time": 1000 + i}, []], "outputs": {},
            "status": {"status_str": end[0], "completed": status == "completed",
                       "messages": [["execution_start", {"timestamp": 1}],
                                    [end[1], {"timestamp": 2}]]}}


# --- D3: /jobs filters first, then counts and pages ------------------------------
def _fill_history(server: LiveServer) -> dict[str, str]:
    """160 entries, oldest first: one cancelled, then failed every 7th, else completed."""
    statuses = {}
    for i in range(160):
        status = "cancelled" if i == 0 else "failed" if i % 7 == 0 else "completed"
        server.state.storage.finish(f"job-{i}", i, entry(i, status))
        statuses[f"job-{i}"] = status
    return statuses


def _all_pages(http: Http, query: str, limit: int) -> tuple[list[str], set[int]]:
    ids: list[str] = []
    totals = set()
    offset = 0
    while True:
        page = http.get(f"/jobs?{query}&limit={limit}&offset={offset}").json()
        ids += [j["id"] for j in page["jobs"]]
        totals.add(page["pagination"]["total"])
        assert len(page["jobs"]) <= limit
        if not page["pagination"]["has_more"]:
            return ids, totals
        assert page["jobs"], "has_more with an empty page"
        offset += limit


def test_jobs_total_counts_every_match_and_filters_page_over_matches(server: LiveServer,
                                                                      http: Http) -> None:
    statuses = _fill_history(server)
    newest_first = [f"job-{i}" for i in range(159, -1, -1)]
    first = http.get("/jobs?limit=2").json()
    assert first["pagination"] == {"offset": 0, "limit": 2, "total": 160, "has_more": True}
    assert [j["id"] for j in first["jobs"]] == newest_first[:2]

    # the drill: the one cancelled job is the oldest, far past the first window
    cancelled = http.get("/jobs?status=cancelled&limit=3").json()
    assert [j["id"] for j in cancelled["jobs"]] == ["job-0"]
    assert cancelled["pagination"] == {"offset": 0, "limit": 3, "total": 1, "has_more": False}
    assert cancelled["jobs"][0]["status"] == "cancelled"

    for query in ("status=failed,cancelled", "status=completed", "status=failed",
                  "status=completed,failed,cancelled", "status=pending,failed"):
        wanted = set(query.removeprefix("status=").split(","))
        ids, totals = _all_pages(http, query, 3)
        expected = [p for p in newest_first if statuses[p] in wanted]
        assert ids == expected, query
        assert totals == {len(expected)}, query
    everything, totals = _all_pages(http, "status=", 50)  # no filter: all of it
    assert everything == newest_first and totals == {160}
    past = http.get("/jobs?status=failed&offset=500").json()
    assert past["jobs"] == [] and past["pagination"]["has_more"] is False
    assert past["pagination"]["total"] == sum(s == "failed" for s in statuses.values())


def test_jobs_pages_run_on_from_the_queue_into_the_history(server: LiveServer,
                                                          http: Http) -> None:
    _fill_history(server)
    ws = server.connect_ws("jobs")
    running = http.post("/prompt", json={"prompt": slow(100000), "client_id": "jobs"}
                        ).json()["prompt_id"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        msg = json.loads(ws.recv())
        if msg["type"] == "progress" and msg["data"]["prompt_id"] == running:
            break
    pending = [http.post("/prompt", json={"prompt": chain(i)}).json()["prompt_id"]
               for i in range(3)]
    try:
        # newest first, as ComfyUI's: the queue's jobs were created after the history's
        # (pending ones posted within the same millisecond keep the queue's order)
        ids, totals = _all_pages(http, "status=in_progress,pending,failed", 2)
        assert totals == {4 + 22}  # running + 3 pending + the 22 failed (every 7th, not 0)
        assert set(ids[:3]) == set(pending) and ids[3] == running
        assert len(set(ids)) == len(ids) == 26
        page = http.get("/jobs?status=pending,completed&limit=5&offset=1").json()
        assert set(j["id"] for j in page["jobs"][:2]) < set(pending)
        assert page["jobs"][2]["id"] == "job-159"
        assert page["pagination"]["total"] == 3 + 137
        # oldest first: the history, then the queue in its order
        ids, totals = _all_pages(http, "status=in_progress,pending,failed&sort_order=asc", 3)
        assert totals == {26} and ids[-4:] == [running, *pending]
        assert ids[:2] == ["job-7", "job-14"]
    finally:
        http.post("/queue", json={"clear": True})
        http.post("/interrupt", json={"prompt_id": running})
    recv_until(ws, running)
    ws.close()


def test_history_status_column_is_filled_for_an_older_database(tmp_path: Path) -> None:
    """A database written before the status column: the column is added and filled at
    start, and a row an older version writes later (status NULL) is filled at the next."""
    path = tmp_path / "db.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE history (seq INTEGER PRIMARY KEY, prompt_id TEXT NOT NULL UNIQUE,
                              number REAL NOT NULL, entry TEXT NOT NULL, finished REAL NOT NULL);
        PRAGMA user_version=1;""")
    for i, status in enumerate(["cancelled", "completed", "failed", "completed"]):
        db.execute("INSERT INTO history(prompt_id, number, entry, finished) VALUES (?,?,?,?)",
                   (f"job-{i}", i, json.dumps(entry(i, status)), 0.0))
    db.execute("INSERT INTO history(prompt_id, number, entry, finished) VALUES "
               "('broken', 9, 'not json', 0)")
    db.commit()
    db.close()
    storage = Storage(path)
    assert storage.history_jobs(["cancelled"], 10, 0) == (1, ["job-0"])
    # newest first by create_time; "broken" has none: 0, the oldest
    assert storage.history_jobs(["failed"], 10, 0) == (2, ["job-2", "broken"])
    assert storage.history_jobs(None, 2, 1) == (5, ["job-2", "job-1"])
    assert storage.history_jobs(["completed"], 0, 0) == (2, [])
    storage.close()
    db = sqlite3.connect(path)  # an older version writes a row: no status
    db.execute("INSERT INTO history(prompt_id, number, entry, finished) VALUES (?,?,?,?)",
               ("late", 10, json.dumps(entry(10, "cancelled")), 0.0))
    db.commit()
    db.close()
    storage = Storage(path)
    assert storage.history_jobs(["cancelled"], 10, 0) == (2, ["late", "job-0"])
    storage.close()


@pytest.mark.parametrize(("value", "expected"), [
    (entry(1, "completed"), "completed"), (entry(1, "failed"), "failed"),
    (entry(1, "cancelled"), "cancelled"), ({}, "failed"), (None, "failed"), ([], "failed"),
    ({"status": {"status_str": "success", "messages": "x"}}, "completed"),
    ({"status": {"status_str": "error", "messages": [[], [5], ["execution_interrupted"]]}},
     "cancelled"),
    ({"status": {"status_str": "error", "messages": [[["execution_error"], {}]]}}, "failed"),
])
def test_history_status_never_raises(value: Any, expected: str) -> None:
    assert history_status(value) == expected


# --- /jobs sort_by, sort_order and workflow_id, as ComfyUI's ---------------------------
def timed_entry(pid: str, created: int, start: int | None, end: int | None,
                workflow: str | None = None) -> dict[str, Any]:
    """A completed history entry created at ``created`` that ran from ``start`` to ``end``."""
    extra: dict[str, Any] = {"create_time": created}
    if workflow is not None:
        extra["extra_pnginfo"] = {"workflow": {"id": workflow}}
    messages = [[e, {"timestamp": t}] for e, t in (("execution_start", start),
                                                   ("execution_success", end)) if t]
    return {"prompt": [0, pid, {}, extra, []], "outputs": {},
            "status": {"status_str": "success", "completed": True, "messages": messages}}


def test_jobs_sort_by_and_sort_order_as_comfyui(server: LiveServer, http: Http) -> None:
    """ComfyUI's test_jobs_api_sorting: asc is oldest first; and execution_duration sorts
    by end - start (0 when either is unknown); a bad value is a structured 400."""
    # finished out of creation order, so the order cannot come from the history's rows
    runs = {"a": (3000, 3100, 3400), "b": (1000, 1100, 1150), "c": (2000, None, None),
            "d": (4000, 4000, 5000)}
    for pid, (created, start, end) in runs.items():
        server.state.storage.finish(pid, 0, timed_entry(pid, created, start, end))

    def ids(query: str) -> list[str]:
        reply = http.get(f"/api/jobs?{query}")
        assert reply.status == 200, reply.body
        return [j["id"] for j in reply.json()["jobs"]]

    assert ids("") == ids("sort_order=desc") == ids("sort_by=created_at") == list("dacb")
    assert ids("sort_order=asc") == list("bcad")
    assert ids("sort_order=ASC&sort_by=Created_At") == list("bcad")  # any case, as ComfyUI's
    assert ids("sort_by=execution_duration") == list("dabc")  # 1000, 300, 50, 0 ms
    assert ids("sort_by=execution_duration&sort_order=asc") == list("cbad")
    assert ids("sort_order=asc&limit=2&offset=1") == list("ca")
    for query, name in (("sort_order=bogus", "sort_order"), ("sort_by=priority", "sort_by"),
                        ("sort_by=execution_duration&sort_order=up", "sort_order")):
        reply = http.get(f"/api/jobs?{query}")
        assert reply.status == 400, query
        error = reply.json()["error"]
        assert error["type"] == "invalid_parameter" and name in error["message"]


def test_jobs_workflow_id_filters_queue_and_history(server: LiveServer, http: Http) -> None:
    for i, workflow in enumerate(["w1", "w2", "w1", None]):
        server.state.storage.finish(f"h{i}", i, timed_entry(f"h{i}", 100 + i, None, None,
                                                            workflow))
    page = http.get("/api/jobs?workflow_id=w1").json()
    assert [j["id"] for j in page["jobs"]] == ["h2", "h0"]
    assert page["pagination"]["total"] == 2
    assert http.get("/api/jobs?workflow_id=nope").json()["pagination"]["total"] == 0
    assert http.get("/api/jobs?workflow_id=").json()["pagination"]["total"] == 4


@pytest.mark.parametrize("sort_by", ["created_at", "execution_duration"])
@pytest.mark.parametrize("descending", [True, False])
def test_jobs_pages_merge_queue_and_history_in_order(tmp_path: Path, sort_by: str,
                                                    descending: bool) -> None:
    """Every page of queued jobs interleaved with the history (by create time and by
    duration) is the slice of the whole list sorted as ComfyUI's get_all_jobs sorts."""
    from server.jobs import _history_page, _queued

    storage = Storage(tmp_path / "db.sqlite")
    keys: dict[str, tuple[int, int]] = {}
    for i in range(12):  # created 10, 20, ...; durations repeat, some unknown (0)
        created, duration = 10 * (i + 1), (i * 7) % 5 * 100
        storage.finish(f"h{i}", i, timed_entry(f"h{i}", created, 1, 1 + duration
                                               if duration else None))
        keys[f"h{i}"] = (created if sort_by == "created_at" else duration, created)
    queued = []
    for i, created in enumerate([35, 5, 200, 75]):  # between, before and after the history
        queued.append(_queued([i, f"q{i}", {}, {"create_time": created}, []], "pending"))
        keys[f"q{i}"] = (created if sort_by == "created_at" else 0, created)
    expected = sorted(keys, key=keys.__getitem__, reverse=descending)
    for limit in (1, 2, 3, 5, 16, 20):
        for offset in range(0, 19):
            total, page = _history_page(storage, None, queued, sort_by, descending, None,
                                        limit, offset)
            assert total == 12
            assert [j["id"] for j in page] == expected[offset:offset + limit], (limit, offset)
    storage.close()


# --- D4: long non-ASCII upload names --------------------------------------------------
def test_fit_name_cuts_bytes_at_a_character_boundary() -> None:
    assert fit_name("a.png") == "a.png"
    name = fit_name("漢" * 100 + ".png")
    assert len(name.encode()) <= MAX_NAME_BYTES and name.endswith(".png")
    assert name == "漢" * 83 + ".png"  # 249 bytes of stem + 4: an 84th would not fit
    emoji = fit_name("🙂" * 149 + ".png")
    assert emoji == "🙂" * 62 + ".png" and len(emoji.encode()) == 252
    assert fit_name("é" * 200 + ".png", " (12)") == "é" * 123 + " (12).png"
    assert len(fit_name("x" * 300 + "." + "y" * 40).encode()) == MAX_NAME_BYTES
    assert sanitize_filename("x" * 300 + ".png") == "x" * 251 + ".png"
    assert sanitize_filename("\x01\x02") == "upload"
    # leading dots go (no hidden files); a name that was only an extension keeps it
    assert [sanitize_filename(n) for n in ("..png", ".JPG", "...", "../.x.png", ".htaccess")
            ] == ["upload.png", "upload.JPG", "upload", "x.png", "htaccess"]


@pytest.mark.parametrize("name", ["漢" * 100 + ".png", "🙂" * 149 + ".png", "ж" * 200,
                                  "a" * 254 + "漢.png"])
def test_long_non_ascii_upload_names_are_shortened_not_a_500(server: LiveServer, http: Http,
                                                             name: str) -> None:
    reply = http.post("/upload/image", data=form(png((1, 1, 1)), name))
    assert reply.status == 200, reply.body
    stored = reply.json()["name"]
    assert len(stored.encode()) <= MAX_NAME_BYTES and stored.endswith(".png")
    assert name.startswith(stored[:-4][:50])
    assert (server.base_dir / "input" / stored).read_bytes() == png((1, 1, 1))
    # same name, other bytes: the numbered name must fit too
    other = http.post("/upload/image", data=form(png((2, 2, 2)), name))
    assert other.status == 200, other.body
    numbered = other.json()["name"]
    assert numbered.endswith(" (1).png") and len(numbered.encode()) <= MAX_NAME_BYTES
    assert (server.base_dir / "input" / numbered).read_bytes() == png((2, 2, 2))
    view = http.get("/view", params={"filename": numbered, "type": "input"})
    assert view.status == 200 and view.body == png((2, 2, 2))


# --- D7: control characters in the upload subfolder -----------------------------------
def test_upload_subfolder_loses_control_characters_as_names_do(server: LiveServer,
                                                              http: Http) -> None:
    # by hand: headers may not hold a control character, so the name has it %-escaped
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"subfolder\"\r\n\r\n"
            b"a\x01b/c\x7f\r\n--XyZ\r\nContent-Disposition: form-data; name=\"image\"; "
            b"filename=\"o%01k.png\"\r\nContent-Type: image/png\r\n\r\n" + png()
            + b"\r\n--XyZ--\r\n")
    reply = http.post("/upload/image", data=body,
                      headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert reply.status == 200, reply.body
    assert reply.json() == {"name": "ok.png", "subfolder": "ab/c", "type": "input"}
    assert (server.base_dir / "input" / "ab" / "c" / "ok.png").read_bytes() == png()
    created = [p.name for p in (server.base_dir / "input").rglob("*")]
    assert not any(not c.isprintable() for n in created for c in n), created
    assert http.post("/upload/image", data=form(png(), subfolder="\x01.hidden")).status == 403
    assert http.post("/upload/image", data=form(png(), subfolder="/\x01tmp")).status == 403
    assert http.post("/upload/image", data=form(png(), subfolder="x/\x00/..")).status == 403
    long = http.post("/upload/image", data=form(png(), subfolder="漢" * 90))
    assert long.status == 400 and long.json()["error"]["type"] == "invalid_path"
    only_controls = http.post("/upload/image", data=form(png(), "p.png", subfolder="\x01\x02"))
    assert only_controls.json()["subfolder"] == ""


# --- D6: a client gone mid-upload is one line, not an ERROR with a traceback -----------
def _cut_upload(server: LiveServer) -> None:
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"cut.png\""
            b"\r\nContent-Type: image/png\r\n\r\n" + png() * 100 + b"\r\n--XyZ--\r\n")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /upload/image HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: multipart/form-data; boundary=XyZ\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                     + body[:len(body) // 2])
        time.sleep(0.3)


def test_client_disconnect_mid_upload_is_logged_without_a_traceback(
        server: LiveServer, http: Http, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    _cut_upload(server)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "disconnected" not in caplog.text:
        time.sleep(0.05)
    assert http.get("/queue").status == 200
    noted = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(noted) == 1 and noted[0].levelno == logging.INFO and noted[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text
    assert not list((server.base_dir / "input").glob("cut*"))
    assert not list((server.base_dir / "input").glob(".upload-*"))


def test_a_connection_reset_that_is_not_the_client_keeps_its_traceback(
        make_server: Any, loop: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def worker_socket_lost(request: web.Request) -> web.Response:
        raise ConnectionResetError("the worker's socket was reset")

    server = make_server(setup_app=lambda app: app.router.add_get("/lost", worker_socket_lost))
    http = Http(server.url, loop)
    reply = http.get("/lost")
    assert reply.status == 500 and reply.json()["error"]["type"] == "internal_error"
    assert b"worker" not in reply.body
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and errors[0].exc_info is not None
    http.close()


# --- reply shapes as ComfyUI's ----------------------------------------------------------
def test_object_info_of_an_unknown_node_is_an_empty_object(http: Http) -> None:
    for prefix in ("", "/api"):
        reply = http.get(prefix + "/object_info/NoSuchNode")
        assert reply.status == 200 and reply.json() == {}
    assert "TestAdd" in http.get("/object_info/TestAdd").json()


def test_execution_error_names_a_builtin_exception_without_builtins(server: LiveServer,
                                                                     http: Http) -> None:
    ws = server.connect_ws("fail")
    prompt = {"1": {"class_type": "TestSource", "inputs": {}},
              "2": {"class_type": "TestFail", "inputs": {"x": ["1", 0]}},
              "3": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}}}
    pid = http.post("/prompt", json={"prompt": prompt, "client_id": "fail"}).json()["prompt_id"]
    events, _ = recv_until(ws, pid)
    error = next(e for e in events if e["type"] == "execution_error")["data"]
    assert error["exception_type"] == "RuntimeError"  # ComfyUI's full_type_name
    stored = wait_history(http, [pid])[pid]["status"]["messages"][-1]
    assert stored[0] == "execution_error" and stored[1]["exception_type"] == "RuntimeError"
    ws.close()


def test_full_type_name_keeps_the_module_of_other_exceptions() -> None:
    from engine.expansion import DependencyCycleError
    from engine.run import full_type_name

    assert full_type_name(OSError) == "OSError"
    assert full_type_name(DependencyCycleError) == "engine.expansion.DependencyCycleError"


def test_a_prompt_without_outputs_is_comfyuis_prompt_no_outputs(http: Http) -> None:
    no_output = {"1": {"class_type": "TestSource", "inputs": {"value": 1}}}
    reply = http.post("/prompt", json={"prompt": no_output})
    assert reply.status == 400
    body = reply.json()
    assert body["error"]["type"] == "prompt_no_outputs"
    assert body["error"]["message"] == "Prompt has no outputs"
    assert "no output node" in body["error"]["details"]
    assert "[" not in body["error"]["details"]  # ComfyUI's front end shows it as it is
    assert body["error"]["extra_info"]["issues"][0]["kind"] == "no_output_node"
    assert body["node_errors"] == {}
    missing = http.post("/prompt", json={"prompt": chain(),
                                         "partial_execution_targets": ["99"]}).json()
    assert missing["error"]["type"] == "prompt_no_outputs" and missing["node_errors"] == {}
    muted = chain()
    for node in muted.values():
        node["mode"] = "muted"
    assert http.post("/prompt", json={"prompt": muted}).json()["error"]["type"] \
        == "prompt_no_outputs"


def _number(http: Http, **body: Any) -> Any:
    reply = http.post("/prompt", json={"prompt": chain(), **body})
    return reply.json()["number"] if reply.status == 200 else reply.json()["error"]["type"]


def test_number_and_front_are_read_as_comfyui_reads_them(http: Http) -> None:
    assert _number(http, number="5") == 5
    assert _number(http, number=" 2.5 ") == 2.5
    assert _number(http, number="-7") == -7
    assert _number(http, number="1e3") == 1000
    assert _number(http, number=True) == 1  # float(True)
    for bad in ("x", "", "nan", "inf", "1e300", str(2**53 + 1), "9" * 100, [5], {"a": 1}):
        assert _number(http, number=bad) == "invalid_number", bad
    assert _number(http, number=str(2**53)) == 2**53
    back = _number(http)
    assert back > 0
    for truthy in (1, "true", "false", "yes", [0], True):  # ComfyUI: `if front:`
        assert _number(http, front=truthy) < 0, truthy
    for falsy in (0, "", [], False, None):
        assert _number(http, front=falsy) > 0, falsy
    http.post("/queue", json={"clear": True})


def test_view_preview_of_an_unknown_format_falls_back_to_webp(server: LiveServer,
                                                              http: Http) -> None:
    out = server.base_dir / "output"
    out.mkdir(exist_ok=True)
    (out / "pic.png").write_bytes(png())
    for preview in ("bogus", "gif;50", "", "webp;abc", "bogus;95", "webp;" + "9" * 5000):
        reply = http.get("/view", params={"filename": "pic.png", "preview": preview})
        assert reply.status == 200, (preview, reply.body[:200])
        assert reply.headers["Content-Type"] == "image/webp", preview
        assert Image.open(io.BytesIO(reply.body)).format == "WEBP"
    jpeg = http.get("/view", params={"filename": "pic.png", "preview": "jpeg;50"})
    assert jpeg.status == 200 and jpeg.headers["Content-Type"] == "image/jpeg"
    raw = http.get("/view", params={"filename": "pic.png"})
    assert raw.headers["Content-Type"] == "image/png" and raw.body == png()


def test_serve_allow_pickle_reaches_validation(make_server):
    """``steerflow serve --allow-pickle`` validated prompts without the opt-in, so every
    .ckpt / .pth was refused with a message telling the user to pass the flag they had."""
    from nodes.models import pickle_problem

    for allowed in (False, True):
        srv = make_server(allow_pickle=allowed)
        env = srv.state.env
        assert env.allow_pickle is allowed and srv.state.runtime.env is env
        inputs = {"ckpt_name": "v1-5-pruned-emaonly.ckpt"}
        assert bool(pickle_problem(inputs, env, "ckpt_name", "checkpoints")) is not allowed


def test_a_prompt_the_database_cannot_store_says_why(make_server, loop, monkeypatch):
    """A full disk under the database answered '... could not be stored: OperationalError';
    the reply now carries sqlite's reason, as the log does."""
    srv = make_server()

    async def full(item):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(srv.state.queue, "submit", full)
    http = Http(srv.url, loop)
    try:
        reply = http.post("/prompt", json={"prompt": chain()})
    finally:
        http.close()
    assert reply.status == 503
    assert "database or disk is full" in reply.json()["error"]["message"]


def test_a_request_aiohttp_cannot_parse_is_one_log_line(server: LiveServer, caplog):
    """A request line over 8 KB got its 400 but left a whole traceback in the log."""
    caplog.set_level(logging.INFO, logger="aiohttp.server")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /ws?clientId=" + b"x" * 100_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        reply = sock.recv(200)
    assert reply.split(b" ")[1] == b"400"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
            r.name == "aiohttp.server" for r in caplog.records):
        time.sleep(0.05)
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records and all(r.exc_info is None and r.levelno == logging.INFO for r in records)
    assert "LineTooLong" in records[0].getMessage()
