"""Malformed /prompt bodies: always a structured 4xx, and the server stays up."""

from __future__ import annotations

import json
from collections import Counter
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.helpers import Http, chain, wait_history

SHARED_SERVER = True  # one server for the module (conftest.py); make_server for a fresh one

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
# Types whose random inputs are harmless to run if they happen to validate
# (no huge tensors, no long sleeps).
SAFE_TYPES = ["TestSource", "TestAdd", "TestOut", "TestFail", "TestFile", "TestImage",
              "PrimitiveInt", "PrimitiveString", "Nope", ""]

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=20)
links = st.tuples(st.sampled_from(["1", "2", "3", "x", 1]),
                  st.integers(min_value=-1, max_value=3)).map(list)
node = st.fixed_dictionaries({
    "class_type": st.sampled_from(SAFE_TYPES) | json_values,
    "inputs": st.dictionaries(st.sampled_from(["value", "a", "b", "label", "mode", "x",
                                               "name", "preview", "zz"]),
                              json_values | links, max_size=4) | json_values,
})
prompts = st.dictionaries(st.sampled_from(["1", "2", "3", "x"]), node | json_values,
                          max_size=4)


def assert_structured_4xx(reply, allow_ok: bool = False) -> None:
    if allow_ok and reply.status == 200:
        assert "prompt_id" in reply.json()
        return
    assert 400 <= reply.status < 500, (reply.status, reply.body[:300])
    error = reply.json()["error"]
    assert isinstance(error["type"], str) and isinstance(error["message"], str)


def assert_prompt_4xx(reply, allow_ok: bool = False) -> None:
    """A /prompt refusal in ComfyUI's shape: ``error`` and ``node_errors`` (its clients
    read both, e.g. its frontend's ``error.response.node_errors``)."""
    assert_structured_4xx(reply, allow_ok)
    if reply.status != 200:
        assert isinstance(reply.json()["node_errors"], dict), reply.body[:300]


def test_random_json_bodies(http: Http):
    @SETTINGS
    @given(json_values)
    def check(value):
        if isinstance(value, dict) and "prompt" in value:
            return
        assert_prompt_4xx(http.post("/prompt", data=json.dumps(value)))

    check()
    assert http.get("/prompt").status == 200


def test_random_bytes_bodies(http: Http):
    @SETTINGS
    @given(st.binary(max_size=300))
    def check(raw):
        assert_prompt_4xx(http.post("/prompt", data=raw,
                                    headers={"Content-Type": "application/json"}))

    check()
    for raw in (b"[" * 100000, b'{"prompt": ' * 50000, b"NaN", b'{"prompt": Infinity}',
                b"\xff\xfe{", b'{"prompt": {"1": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
                b"", b"[1]", b'"prompt"', b"{"):
        assert_prompt_4xx(http.post("/prompt", data=raw))
    assert http.get("/prompt").status == 200


def test_random_prompt_shaped_bodies(http: Http):
    @SETTINGS
    @given(prompts, st.dictionaries(st.sampled_from(["client_id", "prompt_id", "number",
                                                     "front", "extra_data",
                                                     "partial_execution_targets"]),
                                    json_values, max_size=3))
    def check(prompt, extra):
        body = {**extra, "prompt": prompt}
        assert_prompt_4xx(http.post("/prompt", data=json.dumps(body)), allow_ok=True)

    check()
    assert http.get("/prompt").status == 200
    assert http.get("/queue").status == 200


def test_an_oversized_prompt_body_is_a_413_in_comfyuis_shape(make_server, loop):
    server = make_server(max_prompt_bytes=4096)
    http = Http(server.url, loop)
    try:
        reply = http.post("/prompt", data=b'{"prompt": "' + b"a" * 8192 + b'"}')
        assert reply.status == 413
        assert_prompt_4xx(reply)
        assert reply.json()["error"]["extra_info"]["limit_bytes"] == 4096
        assert http.post("/prompt", json={"prompt": chain()}).status == 200
    finally:
        http.close()


def broken_registry() -> None:
    raise RuntimeError("this node pack is broken")


def test_prompt_refusals_carry_node_errors_when_no_node_pack_loads(make_server, loop):
    server = make_server(registry_factory="tests.server.test_fuzz:broken_registry")
    http = Http(server.url, loop)
    try:
        reply = http.post("/prompt", json={"prompt": chain()})
        assert reply.status == 503
        assert reply.json()["error"]["type"] == "nodes_unavailable"
        assert reply.json()["node_errors"] == {}
    finally:
        http.close()


def test_other_routes_reject_malformed_bodies(http: Http):
    for path in ("/queue", "/history", "/interrupt"):
        for raw in (b"{", b"[1]", b'{"delete": 5}', b'{"delete": [1]}', b'{"prompt_id": 3}'):
            reply = http.post(path, data=raw)
            if reply.status != 200:
                assert_structured_4xx(reply)
    assert http.post("/queue", data=b"[1]").status == 400
    assert http.post("/history", data=b'{"delete": 5}').status == 400


names = st.text(max_size=40) | st.sampled_from(["..", "../x.png", "/etc/passwd", "a" * 3000,
                                                 "x.png", "%2e%2e", "\x00.png", "~", "."])


def test_random_view_and_workflow_parameters(http: Http):
    @SETTINGS
    @given(names, names, st.sampled_from(["output", "input", "temp", "", "models", "x"]),
           st.sampled_from([None, "webp;90", "jpeg;x", "gif", ";"]))
    def check(filename, subfolder, kind, preview):
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        if preview is not None:
            params["preview"] = preview
        reply = http.get("/view", params=params)
        assert_structured_4xx(reply)
        name = filename.replace("\x00", "") + ".json"
        assert_structured_4xx(http.get("/workflows/" + name.lstrip("/")))

    check()
    assert http.get("/prompt").status == 200


def test_random_upload_names_and_subfolders(http: Http):
    import io

    import aiohttp
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, format="PNG")
    printable = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30)

    @settings(SETTINGS, max_examples=60)
    @given(printable | names.filter(lambda n: n.isprintable()), printable | names,
           st.sampled_from(["input", "temp", "", "output"]))
    def check(filename, subfolder, kind):
        form = aiohttp.FormData()
        form.add_field("image", buf.getvalue(), filename=filename or "x.png")
        form.add_field("subfolder", subfolder)
        form.add_field("type", kind)
        reply = http.post("/upload/image", data=form)
        if reply.status != 200:
            assert_structured_4xx(reply)
            return
        body = reply.json()
        view = http.get("/view", params={"filename": body["name"],
                                         "subfolder": body["subfolder"], "type": body["type"]})
        assert view.status == 200 and view.body == buf.getvalue()

    check()


# --- every endpoint, numeric edge cases ----------------------------------------------
# Raw JSON literals, so that 1e999, NaN and 400-digit integers reach the server exactly
# as a hostile client would write them.
EDGE_LITERALS = [
    "0", "-0", "0.0", "-0.0", "1", "-1", "9007199254740993", "9223372036854775807",
    "9223372036854775808", "-9223372036854775809", "18446744073709551616", "1e300",
    "-1e300", "1e999", "-1e999", "5e-324", "1.7976931348623157e308", "NaN", "Infinity",
    "-Infinity", "1" + "0" * 400, "-1" + "0" * 400, "1" + "0" * 5000,
    '"1' + "0" * 400 + '"', '"9223372036854775808"', '"NaN"', '"inf"', '"1e999"',
    "true", "null", "[]", "{}", "[" * 5000 + "]" * 5000, '{"a": ' * 900 + "1" + "}" * 900,
    '"' + "x" * 300_000 + '"', '"\\ud800"',
]
# Query and path values: each literal as text, plus path-shaped oddities.
EDGE_TEXTS = [lit[:400] for lit in EDGE_LITERALS] + ["", "..", "%00", "a" * 3000]
GET_PATHS = ["/prompt", "/queue", "/history", "/history/{x}", "/object_info",
             "/object_info/{x}", "/view", "/models", "/models/{x}", "/embeddings",
             "/system_stats", "/workflows", "/workflows/{x}", "/interrupt", "/upload/image"]
POST_PATHS = ["/prompt", "/queue", "/history", "/interrupt", "/upload/image",
              "/object_info", "/view", "/system_stats", "/workflows", "/history/{x}"]
QUERY_NAMES = ["max_items", "offset", "filename", "subfolder", "type", "preview",
               "channel", "clientId", "number"]


def _prompt_with(node_type: str, name: str, literal: str) -> str:
    return ('{"1": {"class_type": "' + node_type + '", "inputs": {"' + name + '": ' + literal
            + '}}, "2": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}}}')


_CHAIN = json.dumps(chain())
PROMPT_TEMPLATES = [
    "{v}", '{"prompt": {v}}', '{"prompt": ' + _CHAIN + ', "number": {v}}',
    '{"prompt": ' + _CHAIN + ', "front": {v}}', '{"prompt": ' + _CHAIN + ', "prompt_id": {v}}',
    '{"prompt": ' + _CHAIN + ', "client_id": {v}}',
    '{"prompt": ' + _CHAIN + ', "extra_data": {v}}',
    '{"prompt": ' + _CHAIN + ', "partial_execution_targets": {v}}',
    '{"prompt": ' + _CHAIN + ', "partial_execution_targets": [{v}]}',
    '{"prompt": ' + _prompt_with("PrimitiveInt", "value", "{v}") + "}",
    '{"prompt": ' + _prompt_with("PrimitiveFloat", "value", "{v}") + "}",
    '{"prompt": ' + _prompt_with("IntMath", "a", "{v}") + "}",
    '{"prompt": ' + _prompt_with("TestSource", "value", "{v}") + "}",
    '{"prompt": ' + _prompt_with("PrimitiveString", "value", "{v}") + "}",
    '{"prompt": ' + _prompt_with("PrimitiveBoolean", "value", "{v}") + "}",
    '{"prompt": {"1": {"class_type": "TestOut", "inputs": {"value": {v}}}}}',
    '{"prompt": {"1": {"class_type": "TestImage", "inputs": {"value": {v}}}}}',
]
OTHER_TEMPLATES = ["{v}", '{"delete": {v}}', '{"delete": [{v}]}', '{"clear": {v}}',
                   '{"prompt_id": {v}}', '{"max_items": {v}}']


def _check_reply(reply, what: str) -> int:
    assert reply.status < 500, (what[:200], reply.status, reply.body[:300])
    if reply.headers.get("Content-Type", "").startswith("application/json"):
        body = json.loads(reply.body, parse_constant=_bare_constant)  # strict, as browsers
        if reply.status >= 400:
            assert isinstance(body["error"]["type"], str), (what[:200], body)
    return reply.status


def _bare_constant(name: str):
    raise AssertionError(f"bare {name} in a JSON answer")


def sweep(http: Http, prefix: str, literals: list[str]) -> Counter[int]:
    """Every endpoint of ``prefix`` against ``literals``; returns the status counts."""
    statuses: Counter[int] = Counter()
    texts = [lit[:400] for lit in literals] + ["", "..", "a" * 3000]
    for path in GET_PATHS:
        for text in texts:
            target = prefix + path.replace("{x}", quote(text, safe="") or "x")
            params = {name: text for name in QUERY_NAMES}
            statuses[_check_reply(http.get(target, params=params), f"GET {target} {text}")] += 1
    for path in POST_PATHS:
        templates = PROMPT_TEMPLATES if path == "/prompt" else OTHER_TEMPLATES
        if path not in ("/prompt", "/queue", "/history", "/interrupt"):
            templates = templates[:1]  # not a JSON endpoint: one body per value will do
        for template in templates:
            for literal in literals:
                body = template.replace("{v}", literal).encode()
                target = prefix + path.replace("{x}", "x")
                reply = http.post(target, data=body,
                                  headers={"Content-Type": "application/json"})
                statuses[_check_reply(reply, f"POST {target} {body[:200]!r}")] += 1
    return statuses


def still_runs(http: Http) -> None:
    http.post("/queue", json={"clear": True})
    http.post("/interrupt")
    pid = http.post("/prompt", json={"prompt": chain(9)}).json()["prompt_id"]
    entry = wait_history(http, [pid])[pid]
    assert entry["status"]["status_str"] == "success", entry
    for path in ("/history", f"/history/{pid}", "/queue", "/prompt"):
        _check_reply(http.get(path), path)


def test_every_endpoint_survives_numeric_edge_cases(http: Http):
    statuses = sweep(http, "", EDGE_LITERALS)
    assert not [s for s in statuses if s >= 500]
    assert statuses[200] and statuses[400]  # both sides of the line were exercised
    # /api/ serves the same handlers: a sample of the values there too.
    sweep(http, "/api", ["1e999", "1" + "0" * 400, "NaN", "9223372036854775808", "-0"])
    still_runs(http)


@pytest.mark.slow
def test_every_api_endpoint_then_a_restart(make_server, loop):
    server = make_server()
    http = Http(server.url, loop)
    sweep(http, "/api", EDGE_LITERALS)
    still_runs(http)
    http.close()
    base = server.base_dir
    server.stop()
    again = make_server(base_dir=base)
    http = Http(again.url, loop)
    still_runs(http)
    http.close()


numbers = (st.integers() | st.integers(min_value=2**62, max_value=2**66)
           | st.integers(min_value=-(2**66), max_value=-(2**62))
           | st.sampled_from([10**400, -(10**400), 2**63, 2**64, -(2**63) - 1])
           | st.floats())  # nan and inf included: json.dumps writes them as bare literals


def test_random_numbers_in_prompts(http: Http):
    @SETTINGS
    @given(numbers, st.sampled_from([("PrimitiveInt", "value"), ("PrimitiveFloat", "value"),
                                     ("IntMath", "a"), ("IntMath", "b"),
                                     ("TestSource", "value"), ("TestImage", "value")]),
           numbers, st.booleans())
    def check(value, target, number, with_number):
        node_type, name = target
        text = json.dumps(value)  # plain ints of any size, NaN, Infinity, 1e+300
        prompt = _prompt_with(node_type, name, text)
        body = '{"prompt": ' + prompt + (f', "number": {json.dumps(number)}' if with_number
                                         else "") + "}"
        _check_reply(http.post("/prompt", data=body.encode()), body[:200])

    check()
    still_runs(http)
