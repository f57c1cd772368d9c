"""POST /workflow/convert: the canvas's one way to read ComfyUI's UI format."""

from __future__ import annotations

import pytest

from engine.comfy_workflow import UNPACKED_SUBGRAPHS
from tests.server.helpers import Http, LiveServer, wait_history

# TestSource -> Reroute -> TestAdd (b from a PrimitiveNode) -> TestOut, and a muted TestOut
UI = {
    "nodes": [
        {"id": 1, "type": "TestSource", "pos": [0, 0], "size": [200, 80],
         "widgets_values": [5, "hello", "a"],
         "outputs": [{"name": "INT", "type": "INT", "links": [1]}]},
        {"id": 2, "type": "Reroute", "pos": [100, 0],
         "inputs": [{"name": "", "type": "*", "link": 1}],
         "outputs": [{"name": "", "type": "INT", "links": [2]}]},
        {"id": 3, "type": "TestAdd", "pos": [300, 0], "title": "Plus",
         "inputs": [{"name": "a", "type": "INT", "link": 2},
                    {"name": "b", "type": "INT", "link": 4, "widget": {"name": "b"}}],
         "outputs": [{"name": "INT", "type": "INT", "links": [3, 5]}], "widgets_values": [0]},
        {"id": 4, "type": "TestOut", "pos": [600, 0],
         "inputs": [{"name": "value", "type": "*", "link": 3}]},
        {"id": 5, "type": "PrimitiveNode", "pos": [0, 200],
         "outputs": [{"name": "INT", "type": "INT", "links": [4], "widget": {"name": "b"}}],
         "widgets_values": [37, "fixed"]},
        {"id": 6, "type": "TestOut", "pos": [600, 200], "mode": 2,
         "inputs": [{"name": "value", "type": "*", "link": 5}]},
        {"id": 7, "type": "MarkdownNote", "pos": [0, 400], "widgets_values": ["# notes"]},
    ],
    "links": [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "INT"], [3, 3, 0, 4, 0, "INT"],
              [4, 5, 0, 3, 1, "INT"], [5, 3, 0, 6, 0, "INT"]],
    "groups": [{"title": "G", "bounding": [0, 0, 10, 10]}],
    "extra": {"ds": {"scale": 2, "offset": [1, 2]}}, "version": 0.4,
}


@pytest.mark.slow  # runs the prompt in the server's worker
def test_convert_then_queue(server: LiveServer, http: Http):
    for path, body in (("/workflow/convert", UI), ("/api/workflow/convert", {"workflow": UI})):
        reply = http.post(path, json=body)
        assert reply.status == 200, reply.body
        data = reply.json()
        assert data["source"] == "comfyui" and data["warnings"] == []
        doc = data["document"]
        assert doc["format"] == "steerflow.workflow"
        assert doc["prompt"] == {
            "1": {"class_type": "TestSource",
                  "inputs": {"value": 5, "label": "hello", "mode": "a"}},
            # the PrimitiveNode (5) becomes an Int primitive linked where it fed
            "3": {"class_type": "TestAdd", "inputs": {"b": ["5", 0], "a": ["1", 0]},
                  "_meta": {"title": "Plus"}},
            "4": {"class_type": "TestOut", "inputs": {"value": ["3", 0]}},
            "5": {"class_type": "PrimitiveInt", "inputs": {"value": 37}},
            "6": {"class_type": "TestOut", "inputs": {"value": ["3", 0]}, "mode": "muted"},
        }
        # and the Reroute (2) a canvas reroute
        assert doc["layout"]["nodes"]["3"] == {"pos": [300, 0], "title": "Plus",
                                               "via": {"a": "2"}}
        assert doc["layout"]["viewport"] == {"x": 2, "y": 4, "zoom": 2}
        assert doc["layout"]["groups"] == [{"title": "G", "bounding": [0, 0, 10, 10]}]
    # the document's prompt queues as it is: the muted output does not run
    pid = http.post("/prompt", json={"prompt": doc["prompt"]}).json()["prompt_id"]
    entry = wait_history(http, [pid])[pid]
    assert entry["outputs"] == {"4": {"value": [42]}}


@pytest.mark.slow  # runs the prompt in the server's worker
def test_a_subgraph_converts_and_queues_as_its_nodes(server: LiveServer, http: Http):
    from tests.test_comfy_subgraphs import to_subgraph

    wf = to_subgraph(UI, {2, 3}, 9, "5f0c-4d2e", name="Add")
    data = http.post("/workflow/convert", json=wf).json()
    assert data["warnings"] == [UNPACKED_SUBGRAPHS]  # a save from the canvas writes them flat
    prompt = data["document"]["prompt"]
    assert prompt["9:3"]["inputs"] == {"b": ["5", 0], "a": ["1", 0]}
    assert prompt["4"]["inputs"] == {"value": ["9:3", 0]}
    pid = http.post("/prompt", json={"prompt": prompt}).json()["prompt_id"]
    assert wait_history(http, [pid])[pid]["outputs"] == {"4": {"value": [42]}}


def test_convert_other_formats_and_errors(http: Http):
    api = {"1": {"class_type": "TestOut", "inputs": {"value": 1}}}
    data = http.post("/workflow/convert", json=api).json()
    assert data["source"] == "api" and data["document"]["prompt"] == api
    assert data["document"]["layout"]["nodes"]["1"]["pos"] == [0.0, 0.0]
    unknown = {"nodes": [{"id": 1, "type": "Nope", "pos": [0, 0]}], "links": []}
    assert http.post("/workflow/convert", json=unknown).json()["warnings"] == [
        "node type Nope is not available here (node 1)"]
    bad = http.post("/workflow/convert", json=[1, 2])
    assert bad.status == 400 and bad.json()["error"]["type"] == "invalid_workflow"
    assert http.post("/workflow/convert", data=b"{").status == 400


def test_convert_odd_subgraph_definitions_and_nodes_named_like_wrappers(http: Http):
    """A corrupt ``definitions.subgraphs`` (a number, a string) was a 500; an API prompt
    with a node named "prompt" or "workflow" was unwrapped as a request body."""
    for subgraphs in (5, True, "abc", {"a": 1}, None, 1.5):
        ui = {**UI, "definitions": {"subgraphs": subgraphs}}
        reply = http.post("/workflow/convert", json=ui)
        assert reply.status == 200, (subgraphs, reply.body)
        assert set(reply.json()["document"]["prompt"]) == {"1", "3", "4", "5", "6"}
    named = {"prompt": {"class_type": "TestSource", "inputs": {"value": 2}},
             "out": {"class_type": "TestOut", "inputs": {"value": ["prompt", 0]}}}
    data = http.post("/workflow/convert", json=named).json()
    assert data["source"] == "api" and data["document"]["prompt"] == named
    one = {"workflow": {"class_type": "TestOut", "inputs": {"value": 1}}}
    assert http.post("/workflow/convert", json=one).json()["document"]["prompt"] == one
    # a /prompt body and {"workflow": ...} are still unwrapped
    body = {"prompt": named, "client_id": "c"}
    assert http.post("/workflow/convert", json=body).json()["document"]["prompt"] == named
    assert http.post("/workflow/convert", json={"workflow": named}
                     ).json()["document"]["prompt"] == named


def test_export_writes_comfyui_format_that_converts_back(server: LiveServer, http: Http):
    """POST /workflow/export: our document as ComfyUI's UI format (what the canvas saves
    into its workflow library, for ComfyUI's own sidebar to open); converted back it is
    the same prompt."""
    doc = http.post("/workflow/convert", json=UI).json()["document"]
    doc["prompt"]["1"]["inputs"]["value"] = 2**64 - 1  # a seed-sized int stays exact
    reply = http.post("/workflow/export", json={"workflow": doc})
    assert reply.status == 200, reply.body
    ui = reply.json()["workflow"]
    assert isinstance(ui["nodes"], list) and isinstance(ui["links"], list)
    assert "format" not in ui  # ComfyUI's shape, not our document's
    assert {n["type"] for n in ui["nodes"]} >= {"TestSource", "TestAdd", "TestOut"}
    back = http.post("/workflow/convert", json=ui).json()
    assert back["source"] == "comfyui"
    assert back["document"]["prompt"] == doc["prompt"]
    bad = http.post("/workflow/export", json=[1, 2])
    assert bad.status == 400 and "workflow" in bad.json()["error"]["message"]
