"""ComfyUI's small utility nodes (nodes/utility_nodes.py, nodes/bounding_boxes.py,
nodes/image_tiles.py): outputs against hand computations, list and autogrow semantics
through real prompts, structured errors and bounds."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from engine import PromptValidationError
from engine.session import Session
from nodes import image_tiles
from nodes.bounding_boxes import ImageCropToMask, check_box
from nodes.diffusion.handles import Latent
from nodes.diffusion.resize import common_upscale
from nodes.image_tiles import grid, tile_count
from nodes.utility_nodes import ColorToRGBInt, CustomCombo, GetLatentSize, LatentCutToBatch
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    registry = registry_with_capture()
    registry.setups.clear()  # these nodes need no models: skip building the built-in ones
    home = tmp_path_factory.mktemp("utility")
    for role in ("input", "output", "temp"):
        (home / role).mkdir()
    return Session(home, device="cpu", registry=registry)


def put(session, role: str, rel: str, width: int = 40, height: int = 30) -> torch.Tensor:
    """A PNG whose pixels all differ (as IMAGE ``[1, H, W, 3]``)."""
    arr = (np.arange(height * width * 3) % 251).astype(np.uint8).reshape(height, width, 3)
    path = session.env.folder(role) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return torch.from_numpy(arr.astype(np.float32) / 255.0)[None]


def run_captured(session, prompt: dict, *slots: tuple[str, int]) -> list:
    """Run ``prompt`` with a capture of each ``(node, output)``; the captured values."""
    keys = [uuid.uuid4().hex for _ in slots]
    prompt = dict(prompt)
    for k, (key, slot) in enumerate(zip(keys, slots, strict=True)):
        prompt[f"cap{k}"] = {"class_type": "TestCapture",
                             "inputs": {"value": list(slot), "key": key}}
    result = session.run(prompt)
    assert result.ok, result.run.error
    return [CAPTURED.pop(key) for key in keys]


def issues(session, prompt: dict) -> list[tuple[str, str | None, str]]:
    with pytest.raises(PromptValidationError) as info:
        session.run(prompt)
    return [(i.kind, i.input_name, i.message) for i in info.value.issues if i.severity == "error"]


def preview(session, prompt: dict) -> dict[str, list[str]]:
    result = session.run(prompt)
    assert result.ok, result.run.error
    return {node: ui["text"] for node, ui in result.run.outputs.items() if "text" in ui}


# --- bounding boxes and Crop Image ------------------------------------------------------------

def crop_prompt(region) -> dict:
    return {"l": {"class_type": "LoadImage", "inputs": {"image": "crop.png"}},
            "c": {"class_type": "ImageCropV2", "inputs": {"image": ["l", 0],
                                                          "crop_region": region}},
            "p": {"class_type": "PreviewImage", "inputs": {"images": ["c", 0]}}}


def test_crop_image_takes_a_region_constant_or_a_bounding_box_node(session):
    image = put(session, "input", "crop.png")
    (out,) = run_captured(session, crop_prompt({"x": 5, "y": 3, "width": 10, "height": 7}),
                          ("c", 0))
    assert torch.equal(out, image[:, 3:10, 5:15])
    prompt = crop_prompt(["b", 0])
    prompt["b"] = {"class_type": "PrimitiveBoundingBox",
                   "inputs": {"x": 30, "y": 20, "width": 512, "height": 4}}
    (out, box) = run_captured(session, prompt, ("c", 0), ("b", 0))
    assert box == {"x": 30, "y": 20, "width": 512, "height": 4}
    assert torch.equal(out, image[:, 20:24, 30:40])  # cut at the right edge
    # a corner past the image moves onto its last row and column (ComfyUI's clamp)
    (out,) = run_captured(session, crop_prompt({"x": 900, "y": 900, "width": 5, "height": 5}),
                          ("c", 0))
    assert torch.equal(out, image[:, 29:30, 39:40])
    # keys left out take ComfyUI's defaults (0, 0, 512, 512)
    (out,) = run_captured(session, crop_prompt({"width": 3}), ("c", 0))
    assert torch.equal(out, image[:, :, :3])


def test_crop_image_shows_its_result_and_has_comfyuis_schema(session):
    put(session, "input", "crop.png")
    events = []
    prompt = crop_prompt({"x": 0, "y": 0, "width": 4, "height": 4})
    result = session.run(prompt, on_event=lambda name, data: events.append((name, data)))
    assert result.ok
    (shown,) = [d["output"]["images"] for n, d in events if n == "executed" and d["node"] == "c"]
    assert shown[0]["type"] == "temp"
    assert (session.env.folder("temp") / shown[0]["filename"]).is_file()
    schema = registry_with_capture().get("ImageCropV2").schema()
    assert schema["input"]["required"]["crop_region"] == ["BOUNDING_BOX", {
        "tooltip": "x, y, width, height in pixels", "component": "ImageCrop",
        "default": {"x": 0, "y": 0, "width": 512, "height": 512}}]


@pytest.mark.parametrize(("region", "words"), [
    ({"x": -1}, "x must be 0 to 16384"),
    ({"width": 0}, "width must be 1 to 16384"),
    ({"height": 16385}, "height must be 1 to 16384"),
    ({"y": "3"}, "y must be a whole number"),
    ({"x": 1.5}, "x must be a whole number"),
    ("0,0,8,8", "must be an object"),
])
def test_bad_regions_are_validation_errors(session, region, words):
    ((kind, name, message),) = issues(session, crop_prompt(region))
    assert (kind, name) == ("invalid_value", "crop_region") and words in message


def test_crop_region_is_required_and_linked_regions_are_checked(session):
    put(session, "input", "crop.png")
    prompt = crop_prompt({})
    del prompt["c"]["inputs"]["crop_region"]
    ((kind, name, _),) = issues(session, prompt)
    assert (kind, name) == ("missing_input", "crop_region")
    prompt = crop_prompt(["i", 0])
    prompt["i"] = {"class_type": "PrimitiveInt", "inputs": {"value": 3}}
    ((kind, name, _),) = issues(session, prompt)  # an INT is no BOUNDING_BOX
    assert (kind, name) == ("type_mismatch", "crop_region")
    assert check_box({"x": 2.0, "y": 0, "width": 8, "height": 9, "extra": 1}) == {
        "x": 2, "y": 0, "width": 8, "height": 9}


# --- Crop Image to Mask -----------------------------------------------------------------------

def square_mask(size=100, top=40, left=20, side=20) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    mask[:, top:top + side, left:left + side] = 1.0
    return mask


def crop_to_mask(images, masks, **options):
    inputs = {"width": 64, "height": 64, "pad_factor": 1.0, "grow_mask": 0,
              "background": "#000000", **options}
    return ImageCropToMask(images=images, masks=masks, **inputs).execute(None)[0]


def test_crop_to_mask_matches_a_hand_computed_crop():
    image = torch.rand(1, 60, 60, 3)  # under the output's size: cropped as it is
    mask = square_mask(size=60, top=30, left=10, side=12)
    out = crop_to_mask(image, mask, background="#ff0000")
    # The subject spans columns 10..21, rows 30..41: centre (15.5, 35.5), 12 px a side.
    # ComfyUI's box: x1 = int(15.5 - 6) = 9, y1 = int(35.5 - 6) = 29, 12 x 12.
    region = image[0, 29:41, 9:21].permute(2, 0, 1)[None]
    alpha = mask[0, 29:41, 9:21][None, None]
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    expected = common_upscale(region * alpha + red * (1 - alpha), 64, 64, "lanczos")
    assert out.shape == (1, 64, 64, 3)
    assert torch.allclose(out, expected.movedim(1, -1), atol=1e-6)
    # an inverted mask (white around a subject filling most of the middle) is turned over
    centred = square_mask(size=60, top=16, left=16, side=28)
    assert torch.allclose(crop_to_mask(image, 1.0 - centred), crop_to_mask(image, centred))
    # a larger image is first brought down to the output's size (the subject stays)
    big = crop_to_mask(torch.full((1, 200, 200, 3), 0.5), square_mask(200, 80, 40, 40))
    assert big.shape == (1, 64, 64, 3)
    assert big[0, 32, 32].tolist() == pytest.approx([0.5, 0.5, 0.5], abs=0.01)


def test_crop_to_mask_options():
    image = torch.rand(2, 100, 100, 4)  # RGBA: the alpha channel is dropped
    # An all-black mask has no subject, so (as in ComfyUI) its inverse is used: all of the
    # image, widened to 4:3 around its centre (x from int(49.5 - 67) = -17, 134 px wide),
    # the sides background.
    out = crop_to_mask(image, torch.zeros(1, 100, 100), width=128, height=96)
    canvas = torch.zeros(2, 3, 100, 134)
    canvas[..., 17:117] = image[..., :3].movedim(-1, 1)
    expected = common_upscale(canvas, 128, 96, "lanczos")
    assert out.shape == (2, 96, 128, 3)
    assert torch.allclose(out, expected.movedim(1, -1), atol=1e-6)
    # a mask with no clear subject either way (all grey) keeps the whole image, half blended
    grey = crop_to_mask(torch.ones(1, 64, 64, 3), torch.full((1, 64, 64), 0.5))
    assert grey.shape == (1, 64, 64, 3) and float(grey.mean()) == pytest.approx(0.5, abs=0.01)
    # a subject at the corner with a margin: the crop runs past the edge, filled with
    # the background
    corner = square_mask(top=0, left=0, side=10)
    out = crop_to_mask(torch.ones(1, 100, 100, 3), corner, pad_factor=2.0,
                       background="#0000ff")
    assert out[0, 0, 0].tolist() == pytest.approx([0.0, 0.0, 1.0], abs=0.03)  # lanczos rings
    assert out[0, 40, 40].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=0.03)
    # a mask of another size is stretched to the image; one mask serves every image
    grown = crop_to_mask(torch.ones(2, 50, 50, 3), square_mask(), grow_mask=3)
    assert grown.shape == (2, 64, 64, 3)


def test_crop_to_mask_errors():
    with pytest.raises(ValueError, match="batch of 2 but images of 3"):
        crop_to_mask(torch.rand(3, 10, 10, 3), torch.ones(2, 10, 10))
    with pytest.raises(ValueError, match="more than 67108864 pixels"):
        crop_to_mask(torch.rand(1, 1, 4096, 3), torch.ones(1, 1, 4096), width=64,
                     height=4096, pad_factor=2.0)
    assert ImageCropToMask.validate_inputs({"background": "black"}, None) == [
        ("background", "background must be a color as '#RRGGBB', got 'black'")]
    assert ImageCropToMask.validate_inputs({"background": "#00ff0080"}, None) == []


# --- Color Picker, Custom Combo ---------------------------------------------------------------

def test_color_to_rgb_int():
    assert ColorToRGBInt(color="#ff8000").execute(None) == (0xFF8000, "#ff8000", 1.0)
    assert ColorToRGBInt(color="#FF800080").execute(None) == (0xFF8000, "#FF8000", 128 / 255)
    for bad in ("ff8000", "#ff80", "#gg8000", "red", "#ff8000ff00"):
        ((name, message),) = ColorToRGBInt.validate_inputs({"color": bad}, None)
        assert name == "color" and "#RRGGBB" in message


def test_custom_combo_outputs_the_choice_and_its_index(session):
    def run(**inputs):
        texts = preview(session, {
            "c": {"class_type": "CustomCombo", "inputs": inputs},
            "p0": {"class_type": "PreviewAny", "inputs": {"source": ["c", 0]}},
            "p1": {"class_type": "PreviewAny", "inputs": {"source": ["c", 1]}}})
        return texts["p0"][0], int(texts["p1"][0])

    options = {"option1": "one", "option2": "", "option3": "three", "option4": ""}
    # what ComfyUI's front end sends: the options and the hidden index widget
    assert run(choice="three", index=2, **options) == ("three", 2)
    assert run(choice="three", **options) == ("three", 2)  # found among the options
    # the choice is not validated against the options (ComfyUI skips it)
    assert run(choice="four", **options) == ("four", 0)
    assert run(choice="four", index=-1, **options) == ("four", -1)
    schema = CustomCombo.schema()
    assert schema["input"] == {"required": {"choice": [[], {}]}, "optional": {}}
    assert schema["output"] == ["STRING", "INT"] and schema["output_name"] == ["STRING",
                                                                                "INDEX"]


# --- Create List ------------------------------------------------------------------------------

def test_create_list_joins_values_and_lists_and_maps_the_nodes_after_it(session):
    def const(text):
        return {"class_type": "PrimitiveString", "inputs": {"value": text}}

    texts = preview(session, {
        "a": const("a"), "b": const("b"), "c": const("c"),
        "inner": {"class_type": "CreateList", "inputs": {"inputs.input0": ["b", 0],
                                                          "inputs.input1": ["c", 0]}},
        "list": {"class_type": "CreateList", "inputs": {"inputs.input0": ["a", 0],
                                                         "inputs.input1": ["inner", 0]}},
        "cat": {"class_type": "StringConcatenate", "inputs": {
            "string_a": ["list", 0], "string_b": "!", "delimiter": ""}},
        "show": {"class_type": "PreviewAny", "inputs": {"source": ["cat", 0]}}})
    assert texts["show"] == ["a!", "b!", "c!"]  # StringConcatenate ran once per item
    ((kind, name, _),) = issues(session, {
        "l": {"class_type": "CreateList", "inputs": {}},
        "show": {"class_type": "PreviewAny", "inputs": {"source": ["l", 0]}}})
    assert (kind, name) == ("missing_input", "inputs.input0")


# --- latents ----------------------------------------------------------------------------------

def test_get_latent_size(session):
    sizes = run_captured(session, {
        "e": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 48, "batch_size": 3}},
        "s": {"class_type": "GetLatentSize", "inputs": {"latent": ["e", 0]}}},
        ("s", 0), ("s", 1), ("s", 2), ("s", 3))
    assert sizes == [8, 6, 1, 3]
    video = Latent(torch.zeros(2, 16, 5, 12, 10))
    assert GetLatentSize(latent=video).execute(None) == (10, 12, 5, 2)


def test_latent_cut_to_batch():
    samples = torch.arange(2 * 4 * 6 * 8, dtype=torch.float32).view(2, 4, 6, 8)
    mask = torch.rand(1, 1, 6, 8)
    latent = Latent(samples, noise_mask=mask, batch_index=(3, 4))

    def cut(dim, size):
        return LatentCutToBatch(samples=latent, dim=dim, slice_size=size).execute(None)[0]

    out = cut("x", 3)  # 8 columns: two strips of 3 per latent, the last 2 dropped
    assert out.samples.shape == (4, 4, 6, 3)
    expected = [samples[0, ..., 0:3], samples[0, ..., 3:6], samples[1, ..., 0:3],
                samples[1, ..., 3:6]]
    assert all(torch.equal(out.samples[k], e) for k, e in enumerate(expected))
    assert out.noise_mask.shape == (4, 1, 6, 3) and out.batch_index is None
    assert torch.equal(out.noise_mask[3], mask[0, ..., 3:6])
    out = cut("y", 2)
    assert out.samples.shape == (6, 4, 2, 8)
    assert torch.equal(out.samples[4], samples[1, :, 2:4])
    assert cut("x", 100).samples.shape == (2, 4, 6, 8)  # past the size: whole
    assert cut("t", 2) is latent  # an image latent has no frames (ComfyUI leaves it)


# --- Image Compare, Webcam Capture ------------------------------------------------------------

def test_image_compare_shows_both_images(session):
    put(session, "input", "before.png", 8, 6)
    put(session, "input", "after.png", 8, 6)
    result = session.run({
        "a": {"class_type": "LoadImage", "inputs": {"image": "before.png"}},
        "b": {"class_type": "LoadImage", "inputs": {"image": "after.png"}},
        "c": {"class_type": "ImageCompare", "inputs": {"image_a": ["a", 0], "image_b": ["b", 0],
                                                       "compare_view": {"anything": 1}}}})
    assert result.ok, result.run.error
    ui = result.run.outputs["c"]
    assert len(ui["a_images"]) == len(ui["b_images"]) == 1
    assert ui["images"] == ui["a_images"] + ui["b_images"]
    assert all(item["type"] == "temp" for item in ui["images"])
    assert [p.parent for p in session.image_paths(result.run)] == [
        session.env.folder("temp")] * 2
    only_a = session.run({
        "a": {"class_type": "LoadImage", "inputs": {"image": "before.png"}},
        "c": {"class_type": "ImageCompare", "inputs": {"image_a": ["a", 0]}}})
    assert only_a.ok and only_a.run.outputs["c"]["b_images"] == []


def test_webcam_capture_loads_the_upload_and_resizes(session):
    image = put(session, "temp", "webcam/1.png", 20, 10)

    def capture(**inputs):
        node = {"class_type": "WebcamCapture", "inputs": {
            "image": "webcam/1.png [temp]", "width": 0, "height": 0,
            "capture_on_queue": True, **inputs}}
        return run_captured(session, {"w": node}, ("w", 0))[0]

    assert torch.equal(capture(), image)
    assert capture(width=10, height=5).shape == (1, 5, 10, 3)
    assert torch.equal(capture(width=20, height=10), image)  # its size already: as is
    for name, words in (("", "no webcam capture"), ("webcam/2.png [temp]", "not in the temp"),
                        ("../../x.png [temp]", "escapes")):
        prompt = {"w": {"class_type": "WebcamCapture", "inputs": {
            "image": name, "width": 0, "height": 0, "capture_on_queue": True}},
                  "p": {"class_type": "PreviewImage", "inputs": {"images": ["w", 0]}}}
        ((kind, input_name, message),) = issues(session, prompt)
        assert (kind, input_name) == ("node_error", "image") and words in message


def test_webcam_capture_runs_again_only_when_capturing_on_queue(session):
    put(session, "temp", "webcam/2.png", 4, 4)

    def prompt(on_queue):
        return {"w": {"class_type": "WebcamCapture", "inputs": {
            "image": "webcam/2.png [temp]", "width": 0, "height": 0,
            "capture_on_queue": on_queue}},
                "p": {"class_type": "PreviewImage", "inputs": {"images": ["w", 0]}}}

    assert "w" in session.run(prompt(True)).run.executed
    assert "w" in session.run(prompt(True)).run.executed
    session.run(prompt(False))
    assert "w" in session.run(prompt(False)).run.cached


# --- tiles ------------------------------------------------------------------------------------

def test_the_tile_grid_is_comfyuis():
    # 200 x 300 in 128 px tiles overlapping by 32: stride 96; the last tile of each row and
    # column moved back to end at the edge
    assert list(grid(200, 300, 128, 128, 32)) == [
        (0, 0, 128, 128), (72, 0, 200, 128), (0, 96, 128, 224), (72, 96, 200, 224),
        (0, 172, 128, 300), (72, 172, 200, 300)]
    assert tile_count(200, 300, 128, 128, 32) == 6
    assert list(grid(50, 40, 64, 64, 8)) == [(0, 0, 50, 40)]  # smaller than a tile
    # the stride stays at least a quarter tile (16 px here, not 64 - 60)
    assert list(grid(100, 100, 64, 64, 60))[:4] == [
        (0, 0, 64, 64), (16, 0, 80, 64), (32, 0, 96, 64), (36, 0, 100, 64)]
    for w, h, t, o in ((1000, 700, 64, 0), (333, 257, 100, 99), (64, 64, 64, 64)):
        assert tile_count(w, h, t, t, o) == len(list(grid(w, h, t, t, o)))


def test_split_and_merge_tiles_round_trip_through_a_prompt(session):
    image = put(session, "input", "tiles.png", 200, 300)

    def tiles_prompt(between=None):
        prompt = {
            "l": {"class_type": "LoadImage", "inputs": {"image": "tiles.png"}},
            "s": {"class_type": "SplitImageToTileList", "inputs": {
                "image": ["l", 0], "tile_width": 128, "tile_height": 128, "overlap": 32}},
            "m": {"class_type": "ImageMergeTileList", "inputs": {
                "image_list": ["s", 0], "final_width": 200, "final_height": 300,
                "overlap": 32}}}
        if between:
            prompt["x"] = {"class_type": between, "inputs": {"image": ["s", 0]}}
            prompt["m"]["inputs"]["image_list"] = ["x", 0]
        return prompt

    (merged,) = run_captured(session, tiles_prompt(), ("m", 0))
    assert torch.allclose(merged, image, atol=1e-5)
    (tiles,) = image_tiles.SplitImageToTileList(image=image, tile_width=128, tile_height=128,
                                                overlap=32).execute(None)
    assert [tuple(t.shape) for t in tiles] == [(1, 128, 128, 3)] * 6
    assert torch.equal(tiles[1], image[:, 0:128, 72:200])
    (merged,) = run_captured(session, tiles_prompt("ImageInvert"), ("m", 0))
    assert torch.allclose(merged, 1.0 - image, atol=1e-5)  # inverted tile by tile


def test_tile_bounds_and_errors(session, monkeypatch):
    put(session, "input", "tiles.png", 200, 300)
    monkeypatch.setattr(image_tiles, "MAX_TILES", 5)
    message = run_error(session, {
        "l": {"class_type": "LoadImage", "inputs": {"image": "tiles.png"}},
        "s": {"class_type": "SplitImageToTileList", "inputs": {
            "image": ["l", 0], "tile_width": 128, "tile_height": 128, "overlap": 33}},
        "p": {"class_type": "PreviewImage", "inputs": {"images": ["s", 0]}}})
    assert "would make 6 tiles, more than 5" in message
    merge = image_tiles.ImageMergeTileList.model_construct
    with pytest.raises(ValueError, match="same batch and channels"):
        merge(image_list=[torch.rand(1, 64, 64, 3), torch.rand(1, 64, 64, 4)],
              final_width=[96], final_height=[64], overlap=[16]).execute(None)
    with pytest.raises(ValueError, match="final_width must be a whole number from 64"):
        merge(image_list=[torch.rand(1, 64, 64, 3)], final_width=[0], final_height=[64],
              overlap=[0]).execute(None)
    # a 1 px tile with overlap would make ComfyUI's stride 0 (an endless loop)
    (out,) = merge(image_list=[torch.ones(1, 1, 1, 3)] * 4, final_width=[64],
                   final_height=[64], overlap=[8]).execute(None)
    assert out.shape == (1, 64, 64, 3) and out[0, 0, :4].sum() == 12 and out[0, 1].sum() == 0


def test_ui_workflows_keep_front_end_widget_values_in_place(tmp_path):
    """ComfyUI's saved files hold a place in ``widgets_values`` for the widgets only its
    front end draws (a crop box, a camera): the values after them stay on their inputs."""
    from engine.comfy_workflow import convert_ui_workflow
    from engine.registry import default_registry

    registry = default_registry()
    schemas = registry.schema()
    box = {"x": 4, "y": 2, "width": 8, "height": 6}
    wf = {"last_node_id": 2, "last_link_id": 0, "links": [], "nodes": [
        {"id": 1, "type": "ImageCropV2", "pos": [0, 0], "mode": 0,
         "inputs": [{"name": "image", "type": "IMAGE", "link": None}],
         "widgets_values": [box]},
        {"id": 2, "type": "WebcamCapture", "pos": [0, 300], "mode": 0, "inputs": [],
         "widgets_values": ["webcam/1700000000.png [temp]", 640, 480, False]}]}
    prompt = convert_ui_workflow(wf, schemas).prompt
    assert prompt["1"]["inputs"]["crop_region"] == box
    assert {k: prompt["2"]["inputs"][k] for k in ("image", "width", "height",
                                                  "capture_on_queue")} == {
        "image": "webcam/1700000000.png [temp]", "width": 640, "height": 480,
        "capture_on_queue": False}


def test_ui_workflows_keep_custom_combo_options():
    """A Custom Combo's front end adds the hidden ``index`` and option boxes after
    ``choice``; saved files hold them in that order (older ones without ``index``)."""
    from engine.comfy_workflow import convert_ui_workflow
    from engine.registry import default_registry

    schemas = default_registry().schema()

    def convert(values):
        wf = {"last_node_id": 1, "last_link_id": 0, "links": [], "nodes": [
            {"id": 1, "type": "CustomCombo", "pos": [0, 0], "mode": 0, "inputs": [],
             "widgets_values": values}]}
        return convert_ui_workflow(wf, schemas).prompt["1"]["inputs"]

    assert convert(["green", 1, "red", "green", ""]) == {
        "choice": "green", "index": 1, "option1": "red", "option2": "green", "option3": ""}
    assert convert(["green", "red", "green"]) == {
        "choice": "green", "option1": "red", "option2": "green"}
    assert convert(["green"]) == {"choice": "green"}
    assert convert(["red", None, "red"]) == {"choice": "red", "option1": "red"}
    assert convert({"choice": "b", "index": 0, "option1": "b"}) == {
        "choice": "b", "index": 0, "option1": "b"}
