"""ComfyUI's UI format → our document (engine.comfy_workflow), and node modes."""

from __future__ import annotations

import copy
import json

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.comfy_workflow import (
    convert_ui_workflow,
    is_ui_workflow,
    map_widget_values,
    node_def,
)
from engine.workflow import WorkflowFormatError, from_object, load_workflow
from tests.comfy_fixtures import comfy_default, node, object_info

SCHEMAS = object_info()


def convert(wf):
    return convert_ui_workflow(wf, SCHEMAS)


def test_detects_the_format():
    assert is_ui_workflow(comfy_default())
    assert not is_ui_workflow({"format": "steerflow.workflow", "nodes": [], "links": []})
    assert not is_ui_workflow({"1": {"class_type": "X", "inputs": {}}})


def test_default_graph_converts_as_comfyui_queues_it():
    result = convert(comfy_default())
    assert result.warnings == []
    prompt = result.prompt
    # the seed comes from the PrimitiveNode (an Int now); the rest from widgets_values,
    # after the seed's control_after_generate value
    assert prompt["3"]["inputs"] == {
        "model": ["4", 0], "seed": ["11", 0], "steps": 3, "cfg": 8, "sampler_name": "euler",
        "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": ["5", 0], "denoise": 1}
    assert prompt["11"] == {"class_type": "PrimitiveInt", "inputs": {"value": 42}}
    assert prompt["8"]["inputs"] == {"samples": ["3", 0], "vae": ["4", 2]}  # Reroute resolved
    assert prompt["7"]["inputs"] == {"text": "text, watermark", "clip": ["4", 1]}
    assert prompt["9"]["inputs"] == {"images": ["8", 0], "filename_prefix": "ComfyUI"}
    assert prompt["5"]["inputs"] == {"width": 64, "height": 64, "batch_size": 1}
    assert sorted(prompt) == ["11", "3", "4", "5", "6", "7", "8", "9"]  # no Reroute, Note
    assert prompt["6"]["_meta"] == {"title": "Positive"}
    layout = result.document["layout"]
    assert layout["nodes"]["6"] == {"pos": [415, 186], "size": [422, 164], "title": "Positive"}
    assert layout["nodes"]["4"]["size"] == [315, 98]  # litegraph's {"0": w, "1": h}
    # the primitive's "fixed" drives the seed; the sampler's hidden "randomize" is gone
    assert "control" not in layout["nodes"]["3"]
    assert layout["nodes"]["11"] == {"pos": [600, 0], "size": [210, 82],
                                     "control": {"value": "fixed"}}
    assert layout["reroutes"] == {"10": {"pos": [1000, 500], "input": ["4", 2]}}
    assert layout["nodes"]["8"]["via"] == {"vae": "10"}
    assert layout["viewport"] == {"x": 50, "y": -20, "zoom": 0.5}
    assert layout["groups"] == [{"title": "Prompts", "bounding": [400, 100, 460, 500],
                                 "color": "#3f789e"}]


def test_boolean_control_after_generate_of_old_files_does_not_shift_widgets():
    wf = comfy_default()
    del node(wf, 3)["inputs"][4]  # no PrimitiveNode on the seed
    for flag, mode in ((True, "randomize"), (False, "fixed")):
        node(wf, 3)["widgets_values"] = [7, flag, 20, 8, "euler", "normal", 1]
        result = convert(wf)
        assert result.prompt["3"]["inputs"]["seed"] == 7
        assert result.prompt["3"]["inputs"]["steps"] == 20
        assert result.prompt["3"]["inputs"]["denoise"] == 1
        assert result.document["layout"]["nodes"]["3"]["control"] == {"seed": mode}


def test_files_without_the_control_value_map_in_order():
    wf = comfy_default()
    del node(wf, 3)["inputs"][4]
    node(wf, 3)["widgets_values"] = [7, 20, 8, "euler", "normal", 1]
    inputs = convert(wf).prompt["3"]["inputs"]
    assert (inputs["seed"], inputs["steps"], inputs["denoise"]) == (7, 20, 1)


def test_a_boolean_widget_after_a_seed_is_not_taken_for_its_control():
    nd = node_def({"input": {"required": {
        "seed": ["INT", {"control_after_generate": True}], "flag": ["BOOLEAN", {}]}}})
    assert map_widget_values([5, True], nd) == ({"seed": 5, "flag": True}, {})
    assert map_widget_values([5, "fixed", True], nd) == ({"seed": 5, "flag": True},
                                                         {"seed": "fixed"})
    assert map_widget_values([5, False, True], nd) == ({"seed": 5, "flag": True},
                                                       {"seed": "fixed"})
    # a seed named as ComfyUI's front end knows it gets a control without the flag
    legacy = node_def({"input": {"required": {"noise_seed": ["INT", {}], "n": ["INT", {}]}}})
    assert map_widget_values([1, "increment", 2], legacy) == ({"noise_seed": 1, "n": 2},
                                                              {"noise_seed": "increment"})


def test_widget_values_by_name_and_trailing_extras():
    wf = {"nodes": [
        {"id": 1, "type": "EmptyLatentImage", "pos": [0, 0],
         "widgets_values": {"width": 128, "batch_size": 2, "videopreview": {}}},
        {"id": 2, "type": "LoadImage", "pos": [0, 0], "widgets_values": ["cat.png", "image"]},
    ], "links": []}
    prompt = convert(wf).prompt
    assert prompt["1"]["inputs"] == {"width": 128, "batch_size": 2}  # height: the default
    assert prompt["2"]["inputs"] == {"image": "cat.png"}  # the upload button's value dropped


def test_converted_widget_linked_from_a_real_node_becomes_a_link():
    wf = comfy_default()
    wf["nodes"].append({"id": 20, "type": "PrimitiveInt", "pos": [0, 0],
                        "outputs": [{"name": "INT", "type": "INT", "links": [20]}],
                        "widgets_values": [5, "fixed"]})
    node(wf, 3)["inputs"].append({"name": "steps", "type": "INT", "link": 20,
                                  "widget": {"name": "steps"}})
    wf["links"].append([20, 20, 0, 3, 5, "INT"])
    prompt = convert(wf).prompt
    assert prompt["3"]["inputs"]["steps"] == ["20", 0]
    assert prompt["20"]["inputs"] == {"value": 5}


def test_reroute_chains_and_dangling_reroutes():
    wf = comfy_default()
    # checkpoint VAE -> Reroute 10 -> Reroute 13 -> VAE Decode
    wf["nodes"].append({"id": 13, "type": "Reroute", "pos": [0, 0],
                        "inputs": [{"name": "", "type": "*", "link": 11}],
                        "outputs": [{"name": "", "type": "VAE", "links": [13]}]})
    wf["links"] = [ln for ln in wf["links"] if ln[0] != 11]
    wf["links"] += [[11, 10, 0, 13, 0, "VAE"], [13, 13, 0, 8, 1, "VAE"]]
    node(wf, 8)["inputs"][1]["link"] = 13
    assert convert(wf).prompt["8"]["inputs"]["vae"] == ["4", 2]
    # a Reroute with nothing upstream leaves the input empty, as in ComfyUI
    node(wf, 10)["inputs"][0]["link"] = None
    assert "vae" not in convert(wf).prompt["8"]["inputs"]


def test_a_link_from_a_node_the_file_lacks_is_dropped_with_a_warning():
    """As a link id missing from the table is (the packs drill: only "required input
    missing" was said, not why)."""
    wf = comfy_default()
    wf["links"] = [[ln[0], 77, *ln[2:]] if ln[3] == 8 and ln[4] == 1 else ln
                   for ln in wf["links"]]
    result = convert(wf)
    assert "vae" not in result.prompt["8"]["inputs"]
    assert any("node 8: input 'vae' is linked from node 77, which the workflow does not "
               "have; dropped" in w for w in result.warnings), result.warnings


def test_muted_and_bypassed_nodes_keep_their_mode():
    wf = comfy_default()
    node(wf, 7)["mode"] = 2
    node(wf, 6)["mode"] = 4
    result = convert(wf)
    assert result.prompt["7"]["mode"] == "muted"
    assert result.prompt["6"]["mode"] == "bypass"
    assert "mode" not in result.prompt["3"]
    assert "7" in result.document["layout"]["nodes"]


def test_links_as_objects_and_as_a_dict():
    wf = comfy_default()
    objects = [{"id": ln[0], "origin_id": ln[1], "origin_slot": ln[2], "target_id": ln[3],
                "target_slot": ln[4], "type": ln[5]} for ln in wf["links"]]
    expected = convert(wf).prompt
    assert convert({**wf, "links": objects}).prompt == expected
    assert convert({**wf, "links": {str(o["id"]): o for o in objects}}).prompt == expected


def test_what_cannot_be_carried_over_is_reported():
    wf = comfy_default()
    wf["nodes"].append({"id": 20, "type": "UpscaleModelLoader", "pos": [0, 900],
                        "widgets_values": ["x4.pth"]})
    wf["nodes"].append({"id": 21, "type": "workflow>Upscale", "pos": [0, 0]})
    node(wf, 7)["inputs"][0]["link"] = 99  # no such link
    result = convert(wf)
    text = "\n".join(result.warnings)
    assert "UpscaleModelLoader is not available here (node 20)" in text
    assert "node 21 is a group node (workflow>Upscale) whose definition" in text
    assert "21" not in result.prompt
    assert "link 99" in text and "clip" not in result.prompt["7"]["inputs"]
    assert result.prompt["20"] == {"class_type": "UpscaleModelLoader", "inputs": {}}


def test_from_object_needs_the_schemas_for_the_ui_format():
    with pytest.raises(WorkflowFormatError, match="needs the node schemas"):
        from_object(comfy_default())
    warnings: list[str] = []
    prompt, document = from_object(comfy_default(), SCHEMAS, warnings)
    assert prompt["3"]["inputs"]["seed"] == ["11", 0] and prompt["11"]["inputs"]["value"] == 42
    assert document["format"] == "steerflow.workflow"
    assert prompt["6"]["_meta"] == {"title": "Positive"}


def _png(path, **chunks):
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, json.dumps(value))
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return path


def test_png_with_only_the_ui_workflow(tmp_path):
    png = _png(tmp_path / "comfy.png", workflow=comfy_default())
    prompt, document = load_workflow(png, SCHEMAS)
    assert prompt["8"]["inputs"]["vae"] == ["4", 2]
    assert document["layout"]["nodes"]["6"]["title"] == "Positive"
    with pytest.raises(WorkflowFormatError, match="needs the node schemas"):
        load_workflow(png)


def test_png_with_prompt_and_ui_workflow_runs_the_prompt(tmp_path):
    ran = convert(comfy_default()).prompt
    ran = copy.deepcopy(ran)
    ran["3"]["inputs"]["seed"] = 1234  # what ComfyUI queued
    png = _png(tmp_path / "comfy.png", prompt=ran, workflow=comfy_default())
    prompt, document = load_workflow(png, SCHEMAS)
    assert prompt["3"]["inputs"]["seed"] == 1234
    assert document["layout"]["nodes"]["3"]["pos"] == [863, 186]
    prompt, document = load_workflow(png)  # without schemas: the prompt alone
    assert prompt["3"]["inputs"]["seed"] == 1234 and document is None


def test_a_node_whose_id_is_prompt_is_not_taken_for_a_request_body():
    from engine.workflow import from_object

    node = {"class_type": "PrimitiveInt", "inputs": {"value": 1}}
    assert from_object({"prompt": node})[0] == {"prompt": node}
    body = {"prompt": {"1": node}, "client_id": "c"}
    assert from_object(body)[0] == {"1": node}


def test_an_int_primitive_keeps_its_control_after_generate():
    """ComfyUI's Int saves [value, "increment"] (the veteran's walk: the mode was dropped,
    and batch count 2 queued 500 twice)."""
    wf = comfy_default()
    wf["nodes"].append({"id": 20, "type": "PrimitiveInt", "pos": [0, 0],
                        "outputs": [{"name": "INT", "type": "INT", "links": []}],
                        "widgets_values": [500, "increment"]})
    result = convert(wf)
    assert result.prompt["20"]["inputs"] == {"value": 500}
    assert result.document["layout"]["nodes"]["20"]["control"] == {"value": "increment"}
    assert not any("20" in w for w in result.warnings), result.warnings
