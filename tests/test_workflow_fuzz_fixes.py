"""Hostile workflows and images a fuzz drill found: clear errors or best-effort reads,
never a traceback, a 500 or unbounded work."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from engine.comfy_export import ui_view
from engine.comfy_layout import fresh_ids
from engine.workflow import WorkflowFormatError, from_object, load_workflow
from tests.comfy_fixtures import object_info

SCHEMAS = object_info()
DOC = {"format": "steerflow.workflow", "version": 1}


@pytest.mark.parametrize("doc", [
    {**DOC, "prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}, "layout": [1]},
    {**DOC, "prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}},
     "layout": {"nodes": {"1": "x"}}},
    {**DOC, "prompt": {"1": {"class_type": "EmptyImage", "inputs": None}},
     "layout": {"nodes": {"1": {"widgets_values": [8, 8, 1, 0]}}}},
    {**DOC, "prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}},
     "layout": {"nodes": {"1": {"widgets_values": [8, 8, 1, 0], "control": [1]}}}},
])
def test_odd_layouts_open_and_leave_the_prompt_to_validation(doc):
    prompt, _ = from_object(json.loads(json.dumps(doc)), SCHEMAS)
    assert prompt["1"]["class_type"] == "EmptyImage"


def test_the_comfy_view_is_bounded_and_skips_what_is_odd():
    doc = {**DOC, "prompt": {
        "1": {"class_type": "EmptyImage", "inputs": {}, "mode": []},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 3_000_000]}},
        "9" * 5000: {"class_type": "Nope", "inputs": {"x": ["1", -1]}}},
        "layout": {"nodes": {"1": {"pos": 5, "size": True}, "2": {"pos": "ab"}}}}
    started = time.monotonic()
    view = ui_view(doc, SCHEMAS)
    assert time.monotonic() - started < 20  # bounded, not a walk over 3,000,000 slots
    by_type = {n["type"]: n for n in view["nodes"]}
    assert by_type["EmptyImage"]["pos"] == [0.0, 0.0] and by_type["EmptyImage"]["mode"] == 0
    # at the origin too, so stacked below it in that column rather than on top of it
    assert by_type["SaveImage"]["pos"][0] == 0.0 and by_type["SaveImage"]["pos"][1] > 0
    assert len(by_type["EmptyImage"]["outputs"]) < 10 and view["links"] == []
    assert by_type["Nope"]["id"] == "9" * 5000  # kept as text, not an int of 5000 digits
    assert fresh_ids(["9" * 5000, "٣", "7"], 2) == ["8", "9"]


def test_huge_integers_and_text_bombs_are_one_line_errors(tmp_path: Path):
    big = tmp_path / "big.json"
    big.write_text('{"1": ' + "9" * 5000 + "}")
    with pytest.raises(WorkflowFormatError, match="not valid JSON"):
        load_workflow(big)
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", " " * 3_000_000, zip=True)
    Image.new("RGB", (1, 1)).save(tmp_path / "bomb.png", pnginfo=info)
    with pytest.raises(WorkflowFormatError, match="cannot read PNG"):
        load_workflow(tmp_path / "bomb.png")


def test_raw_values_are_filled_in_from_an_image_as_from_a_file(tmp_path: Path):
    from PIL import Image, PngImagePlugin

    doc = {**DOC, "prompt": {"1": {"class_type": "EmptyLatentImage", "inputs": {}}},
           "layout": {"nodes": {"1": {"pos": [0, 0], "widgets_values": [16, 24, 1]}}}}
    info = PngImagePlugin.PngInfo()
    info.add_text("steerflow", json.dumps(doc))
    Image.new("RGB", (1, 1)).save(tmp_path / "raw.png", pnginfo=info)
    prompt, _ = load_workflow(tmp_path / "raw.png", SCHEMAS)
    assert prompt["1"]["inputs"] == {"width": 16, "height": 24, "batch_size": 1}
