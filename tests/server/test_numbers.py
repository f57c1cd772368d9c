"""Every number bounded, every answer strict JSON: the drill's defects, one test each."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest

from nodes.primitives import SHOW_MAX_CHARS
from server import routes
from server.app import DB_NAME
from server.errors import dumps
from server.storage import Storage
from tests.server.helpers import Http, LiveServer, Loop, chain, wait_history

SHARED_SERVER = True  # one server for the module (conftest.py); make_server for a fresh one

BIG_INT = "1" + "0" * 400  # F1: a JSON integer literal no float can hold


def _no_constant(name: str) -> Any:
    raise AssertionError(f"bare {name} in a JSON answer")


def strict(body: bytes) -> Any:
    """Parse as a browser would: NaN/Infinity are not JSON."""
    return json.loads(body, parse_constant=_no_constant)


def post_raw(http: Http, path: str, text: str):
    return http.post(path, data=text.encode(), headers={"Content-Type": "application/json"})


def error_type(reply) -> str:
    assert 400 <= reply.status < 500, (reply.status, reply.body[:300])
    return strict(reply.body)["error"]["type"]


def prompt_body(**fields: str) -> str:
    """A /prompt body with raw JSON ``fields`` (so literals such as 1e999 stay as written)."""
    parts = [f'"prompt": {json.dumps(chain())}'] + [f'"{k}": {v}' for k, v in fields.items()]
    return "{" + ", ".join(parts) + "}"


def restart(make_server: Callable[..., LiveServer], server: LiveServer) -> LiveServer:
    """Stop ``server`` and start a new one on the same base dir (and database)."""
    base = server.base_dir
    server.stop()
    return make_server(base_dir=base)


def runs(http: Http) -> dict[str, Any]:
    reply = http.post("/prompt", json={"prompt": chain(5)})
    assert reply.status == 200, reply.body[:500]
    pid = reply.json()["prompt_id"]
    entry = wait_history(http, [pid])[pid]
    assert entry["status"]["status_str"] == "success", entry
    return reply.json()


# --- /prompt "number" and friends ---------------------------------------------------
def test_f1_number_of_400_digits_is_a_400_not_a_500(http: Http):
    reply = post_raw(http, "/prompt", prompt_body(number=BIG_INT))
    assert error_type(reply) == "invalid_number"


def test_f2_number_beyond_64_bits_is_bad_input_not_a_server_fault(http: Http):
    for literal in ("9223372036854775808", "18446744073709551616", "-9223372036854775809",
                    str(2**53 + 1)):
        assert error_type(post_raw(http, "/prompt", prompt_body(number=literal))) \
            == "invalid_number", literal
    runs(http)


@pytest.mark.parametrize("literal", ["1e300", "-1e300", '"x"', '"1e300"', '"nan"', "[1]",
                                     "{}", "1.7976931348623157e308"])
def test_number_must_be_a_bounded_number(http: Http, literal: str):
    # ComfyUI reads float(number): numeric strings and booleans are numbers
    # (tests/server/test_drill_fixes.py), anything else, or out of range, is refused
    assert error_type(post_raw(http, "/prompt", prompt_body(number=literal))) == "invalid_number"


@pytest.mark.parametrize("literal", ["1e999", "-1e999", "NaN", "Infinity", "-Infinity"])
def test_non_finite_literals_are_refused_as_json(http: Http, literal: str):
    assert error_type(post_raw(http, "/prompt", prompt_body(number=literal))) == "invalid_json"


def test_numbers_within_range_are_kept(http: Http):
    for literal, expected in (("0", 0), ("-0.0", 0), ("2.5", 2.5), (str(2**53), 2**53),
                              (str(-(2**53)), -(2**53))):
        reply = post_raw(http, "/prompt", prompt_body(number=literal))
        assert reply.status == 200 and reply.json()["number"] == expected, reply.body


def test_front_is_read_as_comfyui_reads_it(http: Http):
    # ComfyUI: `if json_data['front']`, any truthy value; a non-finite literal is bad JSON
    assert 400 <= post_raw(http, "/prompt", prompt_body(front="1e999")).status < 500
    first = post_raw(http, "/prompt", prompt_body(front="false")).json()["number"]
    assert post_raw(http, "/prompt", prompt_body(front="true")).json()["number"] < 0 < first
    for literal in ("1", '"yes"'):
        assert post_raw(http, "/prompt", prompt_body(front=literal)).json()["number"] < 0
    assert post_raw(http, "/prompt", prompt_body(front="[]")).json()["number"] > 0


@pytest.mark.parametrize(("field", "literal"), [
    ("client_id", "5"), ("client_id", '""'), ("client_id", json.dumps("x" * 201)),
    ("client_id", '"a\\u0000b"'), ("prompt_id", "[]"), ("prompt_id", '"\\n"'),
    ("partial_execution_targets", '"3"'), ("partial_execution_targets", "[3]"),
    ("partial_execution_targets", '[""]'), ("partial_execution_targets", BIG_INT),
])
def test_id_fields_are_validated(http: Http, field: str, literal: str):
    reply = post_raw(http, "/prompt", prompt_body(**{field: literal}))
    assert reply.status == 400 and "node_errors" in strict(reply.body), reply.body


def test_delete_lists_and_interrupt_ids_are_validated(http: Http):
    for path in ("/queue", "/history"):
        for body in ('{"delete": [1]}', '{"delete": [""]}', f'{{"delete": [{BIG_INT}]}}',
                     '{"delete": ' + json.dumps(["x"] * (routes.MAX_ID_LIST + 1)) + "}"):
            assert error_type(post_raw(http, path, body)) == "invalid_request", (path, body)
    for body in ('{"prompt_id": 5}', f'{{"prompt_id": {BIG_INT}}}', '{"prompt_id": ""}'):
        assert error_type(post_raw(http, "/interrupt", body)) == "invalid_prompt_id"
    assert post_raw(http, "/queue", '{"delete": ["nope"]}').json() == {"deleted": 0}


# --- F3: absurd numbers never break the numbering -----------------------------------
def test_f3_absurd_stored_numbers_do_not_break_numbering_after_restart(make_server, loop):
    server = make_server()
    http = Http(server.url, loop)
    assert error_type(post_raw(http, "/prompt", prompt_body(number="1e300"))) \
        == "invalid_number"
    # The largest accepted number, then a restart: numbering continues and still works.
    assert post_raw(http, "/prompt", prompt_body(number=str(2**53))).status == 200
    http.close()
    server = restart(make_server, server)
    http = Http(server.url, loop)
    assert runs(http)["number"] <= 2**53 + 1
    http.close()
    # Rows an older version wrote: numbers of 1e300 and inf in both tables.
    base = server.base_dir
    server.stop()
    db = sqlite3.connect(base / "data" / DB_NAME)
    body = json.dumps({"prompt": chain(7), "extra_data": {}, "outputs": ["3"]})
    db.execute("INSERT INTO queue(prompt_id, number, seq, body, state, attempts, created) "
               "VALUES ('old-queued', 1e300, 9, ?, 'pending', 0, 0)", (body,))
    db.execute("INSERT INTO history(prompt_id, number, entry, finished) "
               "VALUES ('old-done', ?, '{}', 0)", (float("inf"),))
    db.commit()
    db.close()
    server = make_server(base_dir=base)
    http = Http(server.url, loop)
    new = runs(http)
    assert new["number"] <= 2**53 + 2
    history = wait_history(http, ["old-queued"])
    assert history["old-queued"]["status"]["status_str"] == "success"
    assert history["old-queued"]["prompt"][0] <= 2**53  # clamped when loaded
    http.close()


def test_max_counters_ignores_absurd_numbers(tmp_path):
    storage = Storage(tmp_path / "db.sqlite")
    for i, number in enumerate((1e300, float("inf"), -1e308, 12.0, -40.0, 2.0**70)):
        storage.enqueue(f"p{i}", number, i + 1, {"prompt": {}})
    assert storage.max_counters() == (40, 6)
    assert [row.number for row in storage.load_queue()][:2] == [-(2**53), -40]
    storage.close()


# --- F4: strict JSON, in every answer and in the database ---------------------------
def test_f4_infinite_float_constants_are_refused(http: Http):
    for literal in ("1e999", "-1e999"):
        prompt = ('{"1": {"class_type": "PrimitiveFloat", "inputs": {"value": ' + literal
                  + '}}, "2": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}}}')
        assert error_type(post_raw(http, "/prompt", '{"prompt": ' + prompt + "}")) \
            == "invalid_json"
    # Spelled as strings, they reach the engine, which refuses them just the same.
    for text in ("inf", "-Infinity", "nan"):
        prompt = {"1": {"class_type": "PrimitiveFloat", "inputs": {"value": text}},
                  "2": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}}}
        reply = http.post("/prompt", json={"prompt": prompt})
        assert error_type(reply) == "prompt_outputs_failed_validation"
        assert strict(reply.body)["node_errors"]["1"]["errors"][0]["type"] == "invalid_input_type"


def test_f4_stored_nan_and_infinity_are_repaired_at_start(make_server, loop, tmp_path):
    base = tmp_path
    Storage(base / "data" / DB_NAME).close()  # the database a server made, no server run
    db = sqlite3.connect(base / "data" / DB_NAME)
    entry = ('{"prompt": [1, "old", {}, {}, []], "outputs": {"3": {"value": [NaN, Infinity, '
             '-Infinity, "NaN and Infinity in text stay"]}}, "status": {"status_str": '
             '"success", "completed": true, "messages": []}, "meta": {}}')
    db.execute("INSERT INTO history(prompt_id, number, entry, finished) "
               "VALUES ('old', 1, ?, 0)", (entry,))
    body = '{"prompt": ' + json.dumps(chain()) + ', "extra_data": {"x": NaN}, "outputs": ["3"]}'
    db.execute("INSERT INTO queue(prompt_id, number, seq, body, state, attempts, created) "
               "VALUES ('old-q', 2, 1, ?, 'pending', 0, 0)", (body,))
    db.commit()
    db.close()
    server = make_server(base_dir=base)
    http = Http(server.url, loop)
    wait_history(http, ["old-q"])
    history = strict(http.get("/history").body)
    assert history["old"]["outputs"]["3"]["value"] == [None, None, None,
                                                       "NaN and Infinity in text stay"]
    assert history["old-q"]["status"]["status_str"] == "success"
    assert history["old-q"]["prompt"][3] == {"x": None}
    strict(http.get("/history/old").body)
    strict(http.get("/queue").body)
    http.close()


def test_dumps_is_strict_and_never_raises():
    class Odd:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    loop_: list[Any] = [1]
    loop_.append(loop_)
    value = {"nan": float("nan"), "inf": [float("inf"), (float("-inf"),)], "odd": Odd(),
             "set": {1}, "cycle": loop_, "huge": 10**5000, (1, 2): "tuple key",
             "surrogate": "\ud800", "text": "é"}
    out = strict(dumps(value).encode())
    assert out["nan"] is None and out["inf"] == [None, [None]] and out["odd"] == "<Odd>"
    assert out["cycle"] == [1, "<circular>"] and out["surrogate"] == "\ud800"
    assert "é" in dumps({"text": "é"})  # UTF-8, not \u00e9: a third of the size


# --- F5 and the other drill findings ------------------------------------------------
def test_f5_chained_int_multiply_fails_fast(http: Http, server: LiveServer):
    prompt: dict[str, Any] = {"0": {"class_type": "PrimitiveInt", "inputs": {"value": 3}}}
    for i in range(1, 30):
        prompt[str(i)] = {"class_type": "IntMath", "inputs": {
            "a": [str(i - 1), 0], "b": [str(i - 1), 0], "op": "multiply"}}
    prompt["out"] = {"class_type": "ShowValue", "inputs": {"value": ["29", 0]}}
    pid = http.post("/prompt", json={"prompt": prompt}).json()["prompt_id"]
    entry = wait_history(http, [pid], timeout=300)[pid]
    assert entry["status"]["status_str"] == "error"  # at node 6, not 23 nodes later
    (error,) = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert error["node_id"] == "6" and "64-bit" in error["exception_message"]
    runs(http)


def big_invalid_prompt(nodes: int) -> bytes:
    # Each node links to a node that does not exist: one error per node.
    return json.dumps({"prompt": {str(i): {"class_type": "ShowValue",
                                           "inputs": {"value": ["x", 0]}}
                                  for i in range(nodes)}}).encode()


def check_big_invalid(http: Http, nodes: int) -> float:
    data = big_invalid_prompt(nodes)
    start = time.monotonic()
    reply = http.post("/prompt", data=data)
    took = time.monotonic() - start
    body = strict(reply.body)
    assert reply.status == 400 and len(reply.body) < 200_000, len(reply.body)
    extra = body["error"]["extra_info"]
    assert len(body["node_errors"]) == routes.MAX_REPORTED_ISSUES
    assert len(extra["issues"]) == routes.MAX_REPORTED_ISSUES
    assert extra["error_count"] == nodes and extra["nodes_with_errors"] == nodes
    assert extra["errors_omitted"] == nodes - routes.MAX_REPORTED_ISSUES
    assert f"{nodes - routes.MAX_REPORTED_ISSUES} more" in body["error"]["details"]
    return took


def test_invalid_prompt_errors_are_capped(http: Http):
    check_big_invalid(http, 5_000)
    runs(http)


@pytest.mark.slow
def test_200k_invalid_nodes_answer_small(http: Http):
    """The drill's 9.5 MB prompt: was a 55 MB body and a 5 s stall."""
    check_big_invalid(http, 200_000)
    runs(http)


def test_huge_prompt_string_history_is_not_inflated(http: Http):
    text = "é" * 2_000_000  # 4 MB of UTF-8; escaped as \u00e9 it was 12 MB per copy
    prompt = {"1": {"class_type": "PrimitiveString", "inputs": {"value": text}},
              "2": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}}}
    data = json.dumps({"prompt": prompt}, ensure_ascii=False).encode()
    pid = http.post("/prompt", data=data).json()["prompt_id"]
    assert pid in wait_history(http, [pid], timeout=600)  # 4 MB through a busy machine
    item = http.get(f"/history/{pid}")
    # The prompt once, and ShowValue's echo of it capped at SHOW_MAX_CHARS.
    assert len(item.body) < len(text.encode()) + 4 * SHOW_MAX_CHARS
    shown = strict(item.body)[pid]["outputs"]["2"]["text"][0]
    assert shown == text[:SHOW_MAX_CHARS] + f"… ({len(text) - SHOW_MAX_CHARS} more characters)"


def test_history_is_paged_with_a_default_cap_and_a_byte_budget(http: Http, monkeypatch):
    http.post("/history", json={"clear": True})  # the module's server: other tests' entries
    ids = [http.post("/prompt", json={"prompt": chain(i)}).json()["prompt_id"]
           for i in range(5)]
    assert list(wait_history(http, ids)) == ids
    monkeypatch.setattr(routes, "DEFAULT_HISTORY_ITEMS", 3)
    assert list(http.get("/history").json()) == ids[-3:]
    assert list(http.get("/history", params={"max_items": 2}).json()) == ids[-2:]
    assert list(http.get("/history", params={"offset": 1}).json()) == ids[1:4]
    assert list(http.get("/history", params={"max_items": 2, "offset": 3}).json()) == ids[3:]
    assert list(http.get("/history", params={"max_items": 0}).json()) == []
    entry_size = len(http.get(f"/history/{ids[0]}").body)
    monkeypatch.setattr(routes, "MAX_HISTORY_BYTES", int(entry_size * 2.5))
    assert list(http.get("/history", params={"max_items": 5}).json()) == ids[-2:]
    monkeypatch.setattr(routes, "MAX_HISTORY_BYTES", 1)
    assert list(http.get("/history", params={"max_items": 5}).json()) == ids[-1:]  # >= one
    for bad in ("-1", "1e3", "5_0", "x", "1" * 400, "0x10", " 5"):
        assert error_type(http.get("/history", params={"max_items": bad})) \
            == "invalid_parameter", bad


def test_valid_prompt_runs_after_restart(make_server: Callable[..., LiveServer], loop: Loop):
    server = make_server()
    http = Http(server.url, loop)
    runs(http)
    http.close()
    server = restart(make_server, server)
    http = Http(server.url, loop)
    runs(http)
    http.close()
