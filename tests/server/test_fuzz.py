"""Malformed /prompt bodies: always a structured 4xx, and the server stays up."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.helpers import Http

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


def test_random_json_bodies(http: Http):
    @SETTINGS
    @given(json_values)
    def check(value):
        if isinstance(value, dict) and "prompt" in value:
            return
        assert_structured_4xx(http.post("/prompt", data=json.dumps(value)))

    check()
    assert http.get("/prompt").status == 200


def test_random_bytes_bodies(http: Http):
    @SETTINGS
    @given(st.binary(max_size=300))
    def check(raw):
        assert_structured_4xx(http.post("/prompt", data=raw,
                                        headers={"Content-Type": "application/json"}))

    check()
    for raw in (b"[" * 100000, b'{"prompt": ' * 50000, b"NaN", b'{"prompt": Infinity}',
                b"\xff\xfe{", b'{"prompt": {"1": ' + b"[" * 5000 + b"]" * 5000 + b"}}"):
        assert_structured_4xx(http.post("/prompt", data=raw))
    assert http.get("/prompt").status == 200


def test_random_prompt_shaped_bodies(http: Http):
    @SETTINGS
    @given(prompts, st.dictionaries(st.sampled_from(["client_id", "prompt_id", "number",
                                                     "front", "extra_data",
                                                     "partial_execution_targets"]),
                                    json_values, max_size=3))
    def check(prompt, extra):
        body = {**extra, "prompt": prompt}
        assert_structured_4xx(http.post("/prompt", data=json.dumps(body)), allow_ok=True)

    check()
    assert http.get("/prompt").status == 200
    assert http.get("/queue").status == 200


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
