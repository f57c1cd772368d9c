"""Resize Image/Mask (ComfyUI's ``ResizeImageMaskNode``) and the engine's DynamicCombo and
MatchType inputs: the size each ``resize_type`` gives (by hand), images and masks, the API
prompt's dotted sub-inputs, ComfyUI UI workflows as its front end saves them, and the
errors (a missing, out-of-range or unknown sub-input or option; a MASK fed to an IMAGE)."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import PromptValidationError
from engine.comfy_workflow import RegistrySchemas, convert_ui_workflow, node_def
from engine.session import Session
from nodes.diffusion.resize import common_upscale
from nodes.resize_image_mask import ResizeImageMaskNode, plan, resize
from tests.graph_nodes import CAPTURED, registry_with_capture

FIXTURE = Path(__file__).resolve().parents[1] / "web/src/lib/fixtures/resize_image_mask.json"
R = "resize_type"


@pytest.fixture(scope="module")
def session(models_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    for role in ("input", "output", "temp"):
        (home / role).mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 40, 4), dtype=np.uint8)  # 40 wide, 20 high, RGBA
    Image.fromarray(pixels, "RGBA").save(home / "input" / "wide.png")
    Image.fromarray(pixels[:, :30], "RGBA").save(home / "input" / "ref.png")  # 30x20
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


def resize_node(**inputs) -> dict:
    return {"class_type": "ResizeImageMaskNode",
            "inputs": {"input": ["load", 0], "scale_method": "area", **inputs}}


def run(session, node: dict, extra: dict | None = None):
    key = uuid.uuid4().hex
    prompt = {"load": {"class_type": "LoadImage", "inputs": {"image": "wide.png"}},
              "ref": {"class_type": "LoadImage", "inputs": {"image": "ref.png"}},
              "r": node, "cap": {"class_type": "TestCapture",
                                 "inputs": {"value": ["r", 0], "key": key}}, **(extra or {})}
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(key), result


def errors(session, prompt: dict) -> list[tuple[str, str | None]]:
    with pytest.raises(PromptValidationError) as info:
        session.run(prompt)
    return [(i.kind, i.input_name) for i in info.value.issues if i.severity == "error"]


# --- the size of each resize_type, by hand -----------------------------------------------------

@pytest.mark.parametrize(("kind", "size", "params", "expected"), [
    ("scale dimensions", (40, 20), {"width": 30, "height": 0, "crop": "center"}, (30, 15)),
    ("scale dimensions", (40, 20), {"width": 0, "height": 10, "crop": "center"}, (20, 10)),
    ("scale dimensions", (40, 20), {"width": 64, "height": 48, "crop": "disabled"}, (64, 48)),
    ("scale dimensions", (40, 20), {"width": 0, "height": 0, "crop": "center"}, None),
    ("scale by multiplier", (40, 20), {"multiplier": 1.5}, (60, 30)),
    ("scale by multiplier", (40, 20), {"multiplier": 0.33}, (13, 7)),  # 13.2, 6.6 rounded
    ("scale longer dimension", (40, 20), {"longer_size": 64}, (64, 32)),
    ("scale longer dimension", (20, 40), {"longer_size": 64}, (32, 64)),
    ("scale longer dimension", (30, 20), {"longer_size": 64}, (64, 43)),  # 42.67
    ("scale longer dimension", (30, 30), {"longer_size": 64}, (64, 64)),
    ("scale shorter dimension", (40, 20), {"shorter_size": 64}, (128, 64)),
    ("scale shorter dimension", (20, 30), {"shorter_size": 64}, (64, 96)),
    ("scale width", (40, 20), {"width": 30}, (30, 15)),
    ("scale width", (40, 20), {"width": 0}, None),
    ("scale height", (40, 20), {"height": 10}, (20, 10)),
    # int(0.01 * 1024²) = 10485 px; scale sqrt(10485 / 800) = 3.6203: 144.81 x 72.41
    ("scale total pixels", (40, 20), {"megapixels": 0.01}, (145, 72)),
    ("scale to multiple", (40, 24), {"multiple": 8}, None),  # already multiples
    ("scale to multiple", (5, 5), {"multiple": 8}, None),  # no multiple fits
    ("scale to multiple", (40, 20), {"multiple": 1}, None),
])
def test_plan_sizes(kind, size, params, expected):
    assert plan(kind, *size, params).size == expected


def test_plan_crop_match_and_cover():
    assert plan("scale dimensions", 40, 20, {"width": 30, "height": 0, "crop": "center"}
                ).crop == "center"
    assert plan("scale width", 40, 20, {"width": 30}).crop == "disabled"
    p = plan("match size", 40, 20, {"crop": "disabled"}, match_size=(30, 20))
    assert (p.size, p.crop) == ((30, 20), "disabled")
    # 45x30 to multiples of 8: 40x24. 40/45 = 0.889 > 24/30 = 0.8, so scale to 40 wide,
    # ceil(30 * 0.889) = 27 high, and keep rows 1..25 (the middle 24).
    p = plan("scale to multiple", 45, 30, {"multiple": 8})
    assert (p.size, p.window) == ((40, 27), (0, 1, 40, 25))
    # 30x45: the other way round
    p = plan("scale to multiple", 30, 45, {"multiple": 8})
    assert (p.size, p.window) == ((27, 40), (1, 0, 25, 40))
    with pytest.raises(ValueError, match="unknown resize_type"):
        plan("scale sideways", 4, 4, {})


# --- pixels: images and masks ------------------------------------------------------------------

@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"])
def test_image_and_mask_pixels_are_common_upscale(method):
    image = torch.rand(2, 20, 40, 3)
    out = resize(image, "scale dimensions", {"width": 30, "height": 30, "crop": "center"},
                 method)
    expected = common_upscale(image.movedim(-1, 1), 30, 30, method, "center").movedim(1, -1)
    assert out.shape == (2, 30, 30, 3) and torch.equal(out, expected)
    mask = image[..., 0]
    out = resize(mask, "scale dimensions", {"width": 30, "height": 30, "crop": "center"}, method)
    expected = common_upscale(mask[:, None], 30, 30, method, "center")[:, 0]
    assert out.shape == (2, 30, 30) and torch.allclose(out, expected, atol=1e-6)


def test_scale_to_multiple_keeps_the_middle():
    image = torch.rand(1, 30, 45, 3)
    out = resize(image, "scale to multiple", {"multiple": 8}, "bilinear")
    scaled = common_upscale(image.movedim(-1, 1), 40, 27, "bilinear").movedim(1, -1)
    assert out.shape == (1, 24, 40, 3) and torch.equal(out, scaled[:, 1:25])
    mask = torch.rand(30, 45)  # a 2-D mask is one mask
    assert resize(mask, "scale to multiple", {"multiple": 8}, "bilinear").shape == (1, 24, 40)


def test_unchanged_inputs_come_back_as_they_are():
    image = torch.rand(1, 20, 40, 3)
    assert resize(image, "scale width", {"width": 0}, "area") is image
    assert resize(image, "scale dimensions", {"width": 0, "height": 0, "crop": "center"},
                  "area") is image


def test_bad_tensors_and_sizes_are_clear_errors():
    with pytest.raises(ValueError, match=r"IMAGE .* or a MASK"):
        resize(torch.rand(1, 2, 3, 4, 5), "scale by multiplier", {"multiplier": 2.0}, "area")
    with pytest.raises(ValueError, match="empty"):
        resize(torch.rand(1, 0, 4), "scale by multiplier", {"multiplier": 2.0}, "area")
    with pytest.raises(ValueError, match=r"larger resize_type\.multiplier"):
        resize(torch.rand(1, 20, 40, 3), "scale by multiplier", {"multiplier": 0.01}, "area")
    with pytest.raises(ValueError, match="past the maximum"):  # refused before resizing
        resize(torch.rand(1, 4, 4000, 1), "scale by multiplier", {"multiplier": 8.0}, "area")


# --- through the engine: API prompts with dotted sub-inputs ------------------------------------

def test_every_resize_type_runs_from_an_api_prompt(session):
    cases = [
        ({R: "scale dimensions", f"{R}.width": 30, f"{R}.height": 0, f"{R}.crop": "center"},
         (15, 30)),
        ({R: "scale by multiplier", f"{R}.multiplier": 0.5}, (10, 20)),
        ({R: "scale longer dimension", f"{R}.longer_size": 64}, (32, 64)),
        ({R: "scale shorter dimension", f"{R}.shorter_size": 10}, (10, 20)),
        ({R: "scale width", f"{R}.width": 20}, (10, 20)),
        ({R: "scale height", f"{R}.height": 10}, (10, 20)),
        ({R: "scale total pixels", f"{R}.megapixels": 0.01}, (72, 145)),
        ({R: "match size", f"{R}.match": ["ref", 0], f"{R}.crop": "disabled"}, (20, 30)),
        ({R: "scale to multiple", f"{R}.multiple": 16}, (16, 32)),
    ]
    for inputs, (h, w) in cases:
        out, _ = run(session, resize_node(**inputs))
        assert out.shape == (1, h, w, 3), inputs


def test_defaults_fill_left_out_sub_inputs(session):
    out, _ = run(session, resize_node())  # scale dimensions 512 x 512, crop center
    assert out.shape == (1, 512, 512, 3)
    out, _ = run(session, resize_node(**{R: "scale to multiple"}))  # multiple 8: 40x16
    assert out.shape == (1, 16, 40, 3)


def test_a_mask_in_gives_a_mask_out_matching_a_mask(session):
    node = resize_node(**{R: "match size", f"{R}.match": ["ref", 1], f"{R}.crop": "center"})
    node["inputs"]["input"] = ["load", 1]  # Load Image's MASK
    out, _ = run(session, node)
    assert out.shape == (1, 20, 30) and out.dtype == torch.float32


def test_another_options_inputs_are_ignored_with_a_warning(session):
    _, result = run(session, resize_node(**{R: "scale width", f"{R}.width": 20,
                                            f"{R}.multiplier": 2.0}))
    assert any("resize_type.multiplier" in w.message and "'scale by multiplier'" in w.message
               and "ignored" in w.message for w in result.warnings)


def test_match_type_follows_the_input_through_nodes(session):
    mask_in = resize_node(**{R: "scale by multiplier", f"{R}.multiplier": 0.5})
    mask_in["inputs"]["input"] = ["load", 1]
    chained = {"class_type": "ResizeImageMaskNode", "inputs": {
        "input": ["r", 0], R: "scale width", f"{R}.width": 8, "scale_method": "area"}}
    prompt = {"load": {"class_type": "LoadImage", "inputs": {"image": "wide.png"}},
              "r": mask_in, "r2": chained,
              "save": {"class_type": "PreviewImage", "inputs": {"images": ["r2", 0]}}}
    assert errors(session, prompt) == [("type_mismatch", "images")]
    prompt["mask"] = {"class_type": "MaskToImage", "inputs": {"mask": ["r2", 0]}}
    prompt["save"]["inputs"]["images"] = ["mask", 0]
    assert session.run(prompt).ok
    mask_in["inputs"]["input"] = ["load", 0]  # an IMAGE through both: a PreviewImage takes it
    prompt["save"]["inputs"]["images"] = ["r2", 0]
    del prompt["mask"]
    assert session.run(prompt).ok


def test_a_bypassed_resize_passes_its_input_through(session):
    node = resize_node(**{R: "scale by multiplier", f"{R}.multiplier": 2.0})
    node["mode"] = "bypass"
    out, _ = run(session, node)
    assert out.shape == (1, 20, 40, 3)


# --- errors -------------------------------------------------------------------------------------

def test_validation_errors_name_the_sub_input(session):
    base = {"load": {"class_type": "LoadImage", "inputs": {"image": "wide.png"}},
            "save": {"class_type": "PreviewImage", "inputs": {"images": ["r", 0]}}}

    def check(**inputs):
        return errors(session, {**base, "r": resize_node(**inputs)})

    assert check(**{R: "match size"}) == [("missing_input", f"{R}.match")]
    assert check(**{R: "scale dimensions", f"{R}.width": 99999}) == [
        ("out_of_range", f"{R}.width")]
    assert check(**{R: "scale by multiplier", f"{R}.multiplier": 0}) == [
        ("out_of_range", f"{R}.multiplier")]
    assert check(**{R: "scale to multiple", f"{R}.multiple": 0}) == [
        ("out_of_range", f"{R}.multiple")]
    assert check(**{R: "scale dimensions", f"{R}.crop": "edges"}) == [
        ("not_in_choices", f"{R}.crop")]
    assert check(**{R: "scale sideways"}) == [("not_in_choices", R)]
    assert check(**{R: ["load", 0]}) == [("expected_constant", R)]
    assert check(**{R: "scale longer dimension", f"{R}.longer_size": 0}) == [
        ("node_error", f"{R}.longer_size")]
    assert check(**{R: "match size", f"{R}.match": 3}) == [("expected_link", f"{R}.match")]


def test_a_result_without_pixels_fails_clearly(session):
    # the 40x20 image's longer side to 1 px: 1 x round(0.5) = 1 x 0
    node = resize_node(**{R: "scale longer dimension", f"{R}.longer_size": 1})
    prompt = {"load": {"class_type": "LoadImage", "inputs": {"image": "wide.png"}},
              "r": node, "cap": {"class_type": "TestCapture", "inputs": {"value": ["r", 0]}}}
    result = session.run(prompt)
    assert result.run.status == "error"
    assert "larger resize_type.longer_size" in result.run.error["exception_message"]


# --- schema: ComfyUI's /object_info shape -------------------------------------------------------

def test_schema_is_comfyuis_dynamic_combo_and_match_type():
    schema = ResizeImageMaskNode.schema()
    assert schema["input_order"] == {"required": ["input", R, "scale_method"], "optional": []}
    kind, options = schema["input"]["required"][R]
    assert kind == "COMFY_DYNAMICCOMBO_V3" and options["default"] == "scale dimensions"
    keys = [o["key"] for o in options["options"]]
    assert keys == ["scale dimensions", "scale by multiplier", "scale longer dimension",
                    "scale shorter dimension", "scale width", "scale height",
                    "scale total pixels", "match size", "scale to multiple"]
    by_key = {o["key"]: o["inputs"]["required"] for o in options["options"]}
    assert list(by_key["scale dimensions"]) == ["width", "height", "crop"]
    assert by_key["scale dimensions"]["width"][1] | {"tooltip": ""} == {
        "default": 512, "min": 0, "max": 16384, "step": 1, "tooltip": ""}
    assert by_key["scale dimensions"]["crop"][0] == ["disabled", "center"]
    assert by_key["scale dimensions"]["crop"][1]["default"] == "center"
    assert by_key["scale by multiplier"]["multiplier"][1]["min"] == 0.01
    assert by_key["scale by multiplier"]["multiplier"][1]["max"] == 8.0
    assert by_key["scale total pixels"]["megapixels"][1]["max"] == 16.0
    assert by_key["match size"]["match"][0] == "IMAGE,MASK"
    assert by_key["scale to multiple"]["multiple"][1] | {"tooltip": ""} == {
        "default": 8, "min": 1, "max": 16384, "step": 1, "tooltip": ""}
    assert schema["input"]["required"]["input"][0] == "COMFY_MATCHTYPE_V3"
    assert schema["input"]["required"]["input"][1]["template"] == {
        "template_id": "input_type", "allowed_types": "IMAGE,MASK"}
    scale = schema["input"]["required"]["scale_method"]
    assert scale[0] == ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
    assert scale[1]["default"] == "area"
    assert schema["output"] == ["COMFY_MATCHTYPE_V3"]
    assert schema["output_matchtypes"] == ["input_type"]
    assert schema["output_name"] == ["resized"]
    assert (schema["display_name"], schema["category"]) == ("Resize Image/Mask", "transform")
    assert "output_matchtypes" not in registry_with_capture().get("ImageScale").schema()


def test_the_canvas_fixture_is_the_live_schema():
    from server.info import comfy_schema

    live = json.loads(json.dumps(comfy_schema(ResizeImageMaskNode.schema())))
    assert json.loads(FIXTURE.read_text()) == {"ResizeImageMaskNode": live}


# --- ComfyUI UI workflows, as its front end saves them ----------------------------------------

def ui_node(node_id: int, kind: str, values, inputs=(), outputs=(), **extra) -> dict:
    return {"id": node_id, "type": kind, "pos": [0, 0], "size": [300, 100], "mode": 0,
            "inputs": list(inputs), "outputs": list(outputs), "widgets_values": values,
            "properties": {"Node name for S&R": kind}, **extra}


def slot(name: str, kind: str, link=None, widget: bool = False) -> dict:
    out = {"localized_name": name, "name": name, "type": kind, "link": link}
    if widget:
        out["widget"] = {"name": name}
    return out


def ui_workflow() -> dict:
    """Load Image → three Resize Image/Mask nodes → Save Image, as ComfyUI's front end
    writes them: each node's widgets_values holds resize_type, then its option's widgets,
    then scale_method; a linked sub-input is a slot named ``resize_type.match``."""
    out_image = {"name": "IMAGE", "type": "IMAGE", "links": [1, 2, 5]}
    resized = {"localized_name": "resized", "name": "resized", "type": "IMAGE,MASK"}
    nodes = [
        ui_node(1, "LoadImage", ["wide.png", "image"], outputs=[
            out_image, {"name": "MASK", "type": "MASK", "links": [3]}]),
        ui_node(2, "ResizeImageMaskNode", ["scale dimensions", 32, 0, "center", "lanczos"],
                inputs=[slot("input", "IMAGE,MASK", 1),
                        slot(R, "COMFY_DYNAMICCOMBO_V3", widget=True),
                        slot(f"{R}.width", "INT", widget=True),
                        slot(f"{R}.height", "INT", widget=True),
                        slot(f"{R}.crop", "COMBO", widget=True),
                        slot("scale_method", "COMBO", widget=True)],
                outputs=[{**resized, "links": [4]}]),
        ui_node(3, "ResizeImageMaskNode", ["match size", "disabled", "area"],
                inputs=[slot("input", "IMAGE,MASK", 3),
                        slot(R, "COMFY_DYNAMICCOMBO_V3", widget=True),
                        slot(f"{R}.match", "IMAGE,MASK", 2),
                        slot(f"{R}.crop", "COMBO", widget=True),
                        slot("scale_method", "COMBO", widget=True)],
                outputs=[{**resized, "links": [6]}]),
        # a newer front end's by-name copy wins over the positions
        ui_node(4, "ResizeImageMaskNode", ["scale total pixels", 1, "area"],
                inputs=[slot("input", "IMAGE,MASK", 5)], outputs=[{**resized, "links": [7]}],
                widgets_values_named={R: "scale by multiplier", f"{R}.multiplier": 0.5,
                                      "scale_method": "bilinear"}),
        ui_node(5, "SaveImage", ["resized"], inputs=[slot("images", "IMAGE", 4)]),
        ui_node(6, "MaskToImage", [], inputs=[slot("mask", "MASK", 6)],
                outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [8]}]),
        ui_node(7, "SaveImage", ["mask"], inputs=[slot("images", "IMAGE", 8)]),
        ui_node(8, "SaveImage", ["half"], inputs=[slot("images", "IMAGE", 7)]),
    ]
    links = [[1, 1, 0, 2, 0, "IMAGE"], [2, 1, 0, 3, 2, "IMAGE"], [3, 1, 1, 3, 0, "MASK"],
             [4, 2, 0, 5, 0, "IMAGE"], [5, 1, 0, 4, 0, "IMAGE"], [6, 3, 0, 6, 0, "MASK"],
             [7, 4, 0, 8, 0, "IMAGE"], [8, 6, 0, 7, 0, "IMAGE"]]
    return {"last_node_id": 8, "last_link_id": 8, "nodes": nodes, "links": links,
            "groups": [], "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}


def test_ui_workflow_converts_and_runs(session):
    conversion = convert_ui_workflow(ui_workflow(), RegistrySchemas(session.registry))
    assert conversion.warnings == []
    prompt = conversion.prompt
    assert prompt["2"]["inputs"] == {
        "input": ["1", 0], R: "scale dimensions", f"{R}.width": 32, f"{R}.height": 0,
        f"{R}.crop": "center", "scale_method": "lanczos"}
    assert prompt["3"]["inputs"] == {
        "input": ["1", 1], R: "match size", f"{R}.match": ["1", 0], f"{R}.crop": "disabled",
        "scale_method": "area"}
    assert prompt["4"]["inputs"] == {
        "input": ["1", 0], R: "scale by multiplier", f"{R}.multiplier": 0.5,
        "scale_method": "bilinear"}
    result = session.run(prompt)
    assert result.ok, result.run.error
    assert result.warnings == []
    sizes = {nid: [(i["filename"], Image.open(session.env.folder("output") / i["subfolder"]
                                               / i["filename"]).size)
                   for i in result.run.outputs[nid]["images"]] for nid in ("5", "7", "8")}
    assert sizes["5"][0][1] == (32, 16)
    assert sizes["7"][0][1] == (40, 20)  # the mask at the image's own size
    assert sizes["8"][0][1] == (20, 10)


def test_widget_positions_follow_the_chosen_option():
    schema = ResizeImageMaskNode.schema()
    nd = node_def(schema)
    assert [w.name for w in nd.widgets] == [R, "scale_method"]
    from engine.comfy_workflow import map_widget_values

    for values, expected in [
        (["scale dimensions", 512, 512, "center", "area"],
         {f"{R}.width": 512, f"{R}.height": 512, f"{R}.crop": "center"}),
        (["scale longer dimension", 1536, "lanczos"], {f"{R}.longer_size": 1536}),
        (["scale to multiple", 64, "bicubic"], {f"{R}.multiple": 64}),
        (["match size", "disabled", "area"], {f"{R}.crop": "disabled"}),
    ]:
        out, control = map_widget_values(values, nd)
        assert out == {R: values[0], **expected, "scale_method": values[-1]}
        assert control == {}
    # by name: the option's keys, whatever else the object holds
    out, _ = map_widget_values({R: "scale height", f"{R}.height": 7, f"{R}.width": 9,
                                "scale_method": "area"}, nd)
    assert out == {R: "scale height", f"{R}.height": 7, "scale_method": "area"}


def test_total_pixels_hand_computation_is_comfyuis():
    total = int(0.01 * 1024 * 1024)
    scale = math.sqrt(total / (40 * 20))
    assert (total, round(40 * scale), round(20 * scale)) == (10485, 145, 72)


def test_overrides_reach_dotted_sub_inputs():
    from engine.session import Workflow, WorkflowInputError

    registry = registry_with_capture()
    wf = Workflow({"3": resize_node(**{R: "scale width"}),
                   "v1.5": {"class_type": "ImageInvert", "inputs": {}}})
    wf.set(f"3.{R}.width", 64, registry)
    assert wf.prompt["3"]["inputs"][f"{R}.width"] == 64
    wf.set("3.scale_method", "lanczos", registry)
    assert wf.prompt["3"]["inputs"]["scale_method"] == "lanczos"
    with pytest.raises(WorkflowInputError, match="has no input"):
        wf.set(f"3.{R}.depth", 1, registry)
    with pytest.raises(WorkflowInputError, match="no node '4"):
        wf.set(f"4.{R}.width", 1, registry)


def test_dynamic_combo_declarations_are_checked():
    from typing import Any

    from engine import Input
    from engine.dynamic import dynamic_combo

    with pytest.raises(TypeError, match="declared differently"):
        dynamic_combo("mode", {"a": {"n": (int, Input(1, min=0, max=9))},
                               "b": {"n": (float, Input(1.0, min=0, max=9))}})
    with pytest.raises(TypeError, match="not an option"):
        dynamic_combo("mode", {"a": {}}, default="b")
    specs = dynamic_combo("mode", {"a": {"n": (int, Input(1, min=0, max=9))},
                                   "b": {"n": (int, Input(5, min=0, max=9)),
                                         "x": (Any, Input(type="LATENT", optional=True))}})
    assert list(specs) == ["mode", "mode.n", "mode.x"]
    assert specs["mode"].default == "a" and specs["mode"].choices == ["a", "b"]
    assert [s.default for o in specs["mode"].dynamic for s in o.inputs if s.name == "mode.n"
            ] == [1, 5]  # each option keeps its own default
    assert specs["mode.x"].parent == "mode" and not specs["mode.x"].required


def test_a_node_saved_by_comfyuis_front_end_1_58(session):
    """Resize Image/Mask as ComfyUI's front end 1.58.1, served by Steerflow, saved it after
    choosing "match size" and linking Load Image to both sockets (its graphToPrompt sent
    exactly the inputs asserted here)."""
    resize = {
        "id": 73, "type": "ResizeImageMaskNode", "pos": [10, 10], "size": [270, 154],
        "flags": {}, "order": 1, "mode": 0,
        "inputs": [{"name": "input", "type": "IMAGE,MASK", "link": 83},
                   {"name": "resize_type.match", "type": "IMAGE,MASK", "link": 85}],
        "outputs": [{"name": "resized", "type": "IMAGE", "links": [84]}],
        "properties": {"Node name for S&R": "ResizeImageMaskNode"},
        "widgets_values": ["match size", "center", "area"],
        "widgets_values_named": {R: "match size", f"{R}.crop": "center", "scale_method": "area"}}
    wf = {"nodes": [
        ui_node(72, "LoadImage", ["wide.png", "image"], outputs=[
            {"name": "IMAGE", "type": "IMAGE", "links": [83, 85]}]),
        resize, ui_node(74, "PreviewImage", None, inputs=[slot("images", "IMAGE", 84)])],
        "links": [[84, 73, 0, 74, 0, "IMAGE"], [83, 72, 0, 73, 0, "IMAGE"],
                  [85, 72, 0, 73, 1, "IMAGE"]], "version": 0.4}
    conversion = convert_ui_workflow(wf, RegistrySchemas(session.registry))
    assert conversion.warnings == []
    assert conversion.prompt["73"]["inputs"] == {
        R: "match size", f"{R}.crop": "center", "scale_method": "area",
        "input": ["72", 0], f"{R}.match": ["72", 0]}
    assert session.run(conversion.prompt).ok
