"""``steerflow submit`` against a live server, and one real txt2img prompt."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

import pytest
from PIL import Image

from engine.session import Workflow
from server.client import cmd_submit
from tests.server.helpers import REPO, Http, LiveServer, image, recv_until, start_server, wait_quiet

SHARED_SERVER = True  # one server for the module (conftest.py); make_server for a fresh one


@pytest.fixture(scope="module")
def shared_private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    srv = start_server(tmp_path_factory.mktemp("private"), token="tok")
    yield srv.live
    srv.stop()


@pytest.fixture
def private(shared_private: LiveServer) -> LiveServer:
    """One server with the token ``tok`` for the module's tests, once it is quiet."""
    wait_quiet(shared_private)
    return shared_private


def submit_args(server: LiveServer, workflow, out, *sets: str, token=None):
    return argparse.Namespace(workflow=str(workflow), server=server.url, set=list(sets),
                              output_dir=str(out), token=token, no_progress=False)


def test_submit_streams_and_downloads(private: LiveServer, tmp_path, capsys):
    server = private
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(image(value=3)))
    out = tmp_path / "out"
    assert cmd_submit(submit_args(server, workflow, out, "1.value=200", token="tok")) == 0
    files = list(out.iterdir())
    assert len(files) == 1 and Image.open(files[0]).getpixel((0, 0)) == (200, 0, 0)
    captured = capsys.readouterr()
    assert f"image: {files[0]}" in captured.out and "running node 1" in captured.err
    # The same image again is saved next to the first, not over it.
    assert cmd_submit(submit_args(server, workflow, out, "1.value=200", token="tok")) == 0
    assert len(list(out.iterdir())) == 2


def test_submit_reports_bad_input_and_failures(server: LiveServer, tmp_path, capsys):
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(image()))
    assert cmd_submit(submit_args(server, workflow, tmp_path, "1.value=1000")) == 2
    assert "value" in capsys.readouterr().err
    assert cmd_submit(submit_args(server, tmp_path / "missing.json", tmp_path)) == 2
    failing = tmp_path / "fail.json"
    failing.write_text(json.dumps({
        "1": {"class_type": "TestSource", "inputs": {}},
        "2": {"class_type": "TestFail", "inputs": {"x": ["1", 0]}},
        "3": {"class_type": "TestOut", "inputs": {"value": ["2", 0]}}}))
    assert cmd_submit(submit_args(server, failing, tmp_path)) == 1
    assert "boom" in capsys.readouterr().err
    bad_server = argparse.Namespace(**{**vars(submit_args(server, workflow, tmp_path)),
                                       "server": "ftp://x"})
    assert cmd_submit(bad_server) == 2
    (tmp_path / "a-file").write_text("x")  # an output folder that cannot be made
    capsys.readouterr()
    assert cmd_submit(submit_args(server, workflow, tmp_path / "a-file" / "out")) == 2
    assert "cannot create the output folder" in capsys.readouterr().err


@pytest.mark.slow
def test_real_txt2img_prompt(make_server, models_dir, loop):
    """The example workflow through the real node packs and the tiny model."""
    server = make_server(models_dir=models_dir, registry_factory=None)
    http = Http(server.url, loop)
    ws = server.connect_ws("painter")
    wf = Workflow.load(REPO / "workflows" / "txt2img.json")
    assert wf.prompt["3"]["inputs"]["steps"] == 20
    wf.prompt["3"]["inputs"]["steps"] = 3  # still a sampling loop with progress; 20 took secs
    reply = http.post("/prompt", json={"prompt": wf.prompt, "client_id": "painter",
                                       "extra_data": {"extra_pnginfo": {
                                           "workflow": wf.to_document()}}}, timeout=None)
    assert reply.status == 200, reply.body
    pid = reply.json()["prompt_id"]
    events, _ = recv_until(ws, pid, timeout=300)
    assert events[-2]["type"] == "execution_success", events[-2]
    assert any(e["type"] == "progress" for e in events)
    entry = http.get(f"/history/{pid}").json()[pid]
    pictures = [img for ui in entry["outputs"].values() for img in ui.get("images", [])]
    assert pictures
    view = http.get("/view", params=pictures[0])
    assert view.status == 200 and view.body.startswith(b"\x89PNG")
    ws.close()
    http.close()


def test_submit_converts_comfyui_ui_format_with_the_servers_schemas(private: LiveServer,
                                                                     tmp_path, capsys):
    """A UI-format file (ComfyUI's Save) is converted with the server's /object_info."""
    server = private
    workflow = tmp_path / "ui.json"
    workflow.write_text(json.dumps({
        "last_node_id": 1, "last_link_id": 0, "links": [], "version": 0.4,
        "nodes": [{"id": 1, "type": "TestImage", "pos": [0, 0], "size": [200, 80], "mode": 0,
                   "inputs": [], "outputs": [], "widgets_values": [90, False]}]}))
    out = tmp_path / "out"
    assert cmd_submit(submit_args(server, workflow, out, token="tok")) == 0
    files = list(out.iterdir())
    assert len(files) == 1 and Image.open(files[0]).getpixel((0, 0)) == (90, 0, 0)
    # Without the token the schemas cannot be read: a clear failure, not a traceback.
    assert cmd_submit(submit_args(server, workflow, out)) == 1
    assert "node schemas" in capsys.readouterr().err


def test_submit_refuses_an_unknown_set_input_as_run_does(server: LiveServer, tmp_path, capsys):
    """``--set 1.valuez=5`` is checked against the server's schemas: exit 2, one line naming
    the input and the node type, and nothing is queued."""
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(image()))
    out = tmp_path / "out"
    assert cmd_submit(submit_args(server, workflow, out, "1.valuez=5")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: node 1 (TestImage) has no input 'valuez'; it has: value, preview, hold"]
    assert not out.exists()
    assert cmd_submit(submit_args(server, workflow, out, "1.value=5")) == 0  # known: runs
    # by type, with the server's schemas as the registry (the docs drill: a traceback, as
    # they have no display names of their own; and an unknown name is one line too)
    assert cmd_submit(submit_args(server, workflow, out, "TestImage.value=6")) == 0
    assert cmd_submit(submit_args(server, workflow, out, "Nothing.value=6")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: no node 'Nothing'")


def test_submit_prints_the_servers_warnings(server: LiveServer, tmp_path, capsys):
    """Warnings in the ``/prompt`` reply (the prompt runs anyway) come out as ``run``
    prints its own: ``warning: [kind] node N: message`` on stderr."""
    workflow = tmp_path / "wf.json"
    prompt = image()
    prompt["1"]["inputs"]["valuez"] = 5  # in the file: the server's validation warns
    workflow.write_text(json.dumps(prompt))
    assert cmd_submit(submit_args(server, workflow, tmp_path / "out")) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("warning: [unknown_input] node 1: ") and "valuez" in warnings[0]


def test_set_names_from_object_info_are_the_node_classes_inputs():
    """The server's schema spells a DynamicCombo's inputs under its options, an Autogrow's
    slots as one group and Custom Combo's options as trailing widgets: ``--set`` still
    accepts exactly the names ``run`` accepts."""
    from nodes.batch_grow import BatchImagesNode
    from nodes.math_expression import ComfyMathExpression
    from nodes.resize_image_mask import ResizeImageMaskNode
    from nodes.utility_nodes import CustomCombo
    from server.client import _SchemaInputs

    for cls in (ResizeImageMaskNode, BatchImagesNode, ComfyMathExpression, CustomCombo):
        node = _SchemaInputs({cls.TYPE: cls.schema(None)}).get(cls.TYPE)
        assert node is not None and set(node.INPUT_SPECS) == set(cls.INPUT_SPECS), cls.TYPE
    assert _SchemaInputs({}).get("Missing") is None
