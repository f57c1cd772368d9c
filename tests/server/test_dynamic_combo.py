"""ComfyUI's DynamicCombo and MatchType over HTTP (Resize Image/Mask): ``/object_info``
in the shape ComfyUI's front end (1.33 and later) draws, ``/prompt`` with the dotted
sub-inputs it sends (errors named as its widgets are), and ``/workflow/convert``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from engine import NodeRegistry
from tests.server.helpers import Http, LiveServer
from tests.server.pack import make_registry

R = "resize_type"


def registry_with_resize() -> NodeRegistry:
    from nodes.image import PreviewImage
    from nodes.masks import MaskToImage
    from nodes.resize_image_mask import ResizeImageMaskNode

    registry = make_registry()
    for cls in (ResizeImageMaskNode, PreviewImage, MaskToImage):
        registry.register(cls)
    return registry


@pytest.fixture
def http(make_server: Callable[..., LiveServer], loop: Any):
    server = make_server(
        registry_factory="tests.server.test_dynamic_combo:registry_with_resize")
    client = Http(server.url, loop)
    yield client
    client.close()


def prompt(**inputs: Any) -> dict[str, Any]:
    return {"1": {"class_type": "TestImageTensor", "inputs": {"value": 3}},
            "2": {"class_type": "ResizeImageMaskNode",
                  "inputs": {"input": ["1", 0], "scale_method": "area", **inputs}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}


def test_object_info_is_comfyuis_shape(http: Http) -> None:
    entry = http.get("/object_info/ResizeImageMaskNode").json()["ResizeImageMaskNode"]
    assert entry == http.get("/api/object_info").json()["ResizeImageMaskNode"]
    required = entry["input"]["required"]
    assert list(required) == ["input", R, "scale_method"]
    assert required["input"][0] == "COMFY_MATCHTYPE_V3"
    kind, options = required[R]
    assert kind == "COMFY_DYNAMICCOMBO_V3"
    option = next(o for o in options["options"] if o["key"] == "match size")
    assert list(option["inputs"]["required"]) == ["match", "crop"]
    assert entry["output"] == ["COMFY_MATCHTYPE_V3"]
    assert entry["output_matchtypes"] == ["input_type"]


def test_prompt_errors_name_the_dotted_widget(http: Http) -> None:
    reply = http.post("/prompt", json={"prompt": prompt(**{
        R: "scale dimensions", f"{R}.width": 100000, f"{R}.height": 8})})
    assert reply.status == 400
    (error,) = reply.json()["node_errors"]["2"]["errors"]
    assert error["type"] == "value_bigger_than_max"
    assert error["extra_info"]["input_name"] == f"{R}.width"  # the front end's widget name
    reply = http.post("/prompt", json={"prompt": prompt(**{R: "match size"})})
    (error,) = reply.json()["node_errors"]["2"]["errors"]
    assert (error["type"], error["extra_info"]["input_name"]) == ("required_input_missing",
                                                                  f"{R}.match")


def test_prompt_refuses_an_image_passed_on_where_a_mask_goes(http: Http) -> None:
    bad = prompt(**{R: "scale by multiplier", f"{R}.multiplier": 2.0})
    bad["3"] = {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}}
    bad["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}
    reply = http.post("/prompt", json={"prompt": bad})
    assert reply.status == 400
    (error,) = reply.json()["node_errors"]["3"]["errors"]
    assert error["type"] == "return_type_mismatch" and "is IMAGE" in error["details"]


def test_convert_reads_the_chosen_options_widgets(http: Http) -> None:
    ui = {"nodes": [
        {"id": 1, "type": "TestImageTensor", "pos": [0, 0], "widgets_values": [3, 1],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}]},
        {"id": 2, "type": "ResizeImageMaskNode", "pos": [300, 0],
         "widgets_values": ["scale to multiple", 64, "bicubic"],
         "inputs": [{"name": "input", "type": "IMAGE,MASK", "link": 1},
                    {"name": R, "type": "COMFY_DYNAMICCOMBO_V3", "widget": {"name": R},
                     "link": None}],
         "outputs": [{"name": "resized", "type": "IMAGE,MASK", "links": [2]}]},
        {"id": 3, "type": "PreviewImage", "pos": [600, 0],
         "inputs": [{"name": "images", "type": "IMAGE", "link": 2}]}],
        "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]], "version": 0.4}
    data = http.post("/workflow/convert", json=ui).json()
    assert data["warnings"] == []
    assert data["document"]["prompt"]["2"]["inputs"] == {
        "input": ["1", 0], R: "scale to multiple", f"{R}.multiple": 64,
        "scale_method": "bicubic"}
