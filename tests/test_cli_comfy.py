"""`steerflow run` / `validate` and the Python API on ComfyUI UI-format files."""

from __future__ import annotations

import json

from engine.session import Session
from tests.comfy_fixtures import comfy_default, node
from tests.test_cli import cli


def ui_file(tmp_path, **changes):
    wf = comfy_default()
    node(wf, 3)["widgets_values"] = [7, True, 2, 7.5, "euler", "normal", 1]  # old boolean
    node(wf, 6)["widgets_values"] = ["a red circle embedding:nope"]  # a validation warning
    # a muted preview and a bypassed prompt: both left out of what runs
    wf["nodes"].append({"id": 20, "type": "PreviewImage", "pos": [0, 0], "mode": 2,
                        "inputs": [{"name": "images", "type": "IMAGE", "link": 20}]})
    wf["links"].append([20, 8, 0, 20, 0, "IMAGE"])
    node(wf, 8)["outputs"][0]["links"].append(20)
    for key, value in changes.items():
        wf[key] = value
    path = tmp_path / "comfy.json"
    path.write_text(json.dumps(wf))
    return path


def test_validate_and_run_a_ui_format_file(tmp_path, models_dir, capsys):
    path = ui_file(tmp_path)
    done = cli("validate", str(path), home=tmp_path, models=models_dir, capsys=capsys)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "valid"
    assert "warning: [node_warning] node 6" in done.stderr and "nope" in done.stderr
    as_json = cli("validate", str(path), "--json", home=tmp_path, models=models_dir,
                  capsys=capsys)
    assert [i["kind"] for i in json.loads(as_json.stdout)] == ["node_warning"]

    run = cli("run", str(path), "--no-progress", "--set", "9.filename_prefix=comfy",
              home=tmp_path, models=models_dir, capsys=capsys)
    assert run.returncode == 0, run.stderr
    assert "warning: [node_warning] node 6" in run.stderr
    (line,) = [x for x in run.stdout.splitlines() if x.startswith("image: ")]
    assert "comfy" in line
    assert "node(s) executed" in run.stdout


def test_conversion_warnings_are_printed(tmp_path, models_dir, capsys):
    wf = comfy_default()
    wf["nodes"].append({"id": 30, "type": "SomeCustomNode", "pos": [0, 0],
                        "widgets_values": ["x4.pth"]})
    path = tmp_path / "comfy.json"
    path.write_text(json.dumps(wf))
    done = cli("validate", str(path), home=tmp_path, models=models_dir, capsys=capsys)
    assert "warning: node type SomeCustomNode is not available here" in done.stderr
    assert done.returncode == 2 and "unknown_node_type" in done.stderr


def test_python_api_takes_the_ui_format(tmp_path, models_dir):
    session = Session(tmp_path, models_dir=models_dir, device="cpu")
    wf = session.load(ui_file(tmp_path))
    assert wf.prompt["3"]["inputs"]["steps"] == 2 and wf.prompt["20"]["mode"] == "muted"
    assert wf.document["layout"]["nodes"]["6"]["title"] == "Positive"
    validated = session.validate(wf)
    assert "20" not in validated.nodes and [i.kind for i in validated.warnings] == [
        "node_warning"]
    # a dict in UI format converts too
    assert "3" in session.validate(comfy_default()).nodes
