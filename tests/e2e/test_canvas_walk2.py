"""A second first-time walk through the canvas: Crop Image's box over a small image, models a
workflow names that the server lacks, one message per bad input, long seeds, and the view an
opened workflow gets."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

from playwright.sync_api import expect

from tests.e2e.canvas import Canvas
from tests.e2e.conftest import LiveServer
from tests.e2e.test_canvas import TXT2IMG, small_txt2img

CROP_IMAGE = "walk2_crop.png"
CROP_SIZE = (64, 48)
MISSING_CKPT = "sd_xl_base_1.0.safetensors"
MISSING_LORA = "add_detail.safetensors"

# the nodes' box against the pane's: inside it, centred, and how much of it they fill
FILL = """() => {
    const pane = document.querySelector('.react-flow').getBoundingClientRect();
    const rs = [...document.querySelectorAll('.react-flow__node')]
        .map(e => e.getBoundingClientRect());
    const left = Math.min(...rs.map(r => r.left)), right = Math.max(...rs.map(r => r.right));
    const top = Math.min(...rs.map(r => r.top)), bottom = Math.max(...rs.map(r => r.bottom));
    return {inside: left >= pane.left - 1 && right <= pane.right + 1 && top >= pane.top - 1
                    && bottom <= pane.bottom + 1,
            dx: (left + right) / 2 - (pane.left + pane.right) / 2,
            dy: (top + bottom) / 2 - (pane.top + pane.bottom) / 2,
            fill: Math.max((right - left) / pane.width, (bottom - top) / pane.height),
            zoom: window.steerflow.getViewport().zoom};
}"""


def _document(prompt: dict, pos: dict[str, list[int]], viewport: dict | None = None) -> dict:
    layout: dict = {"nodes": {k: {"pos": v} for k, v in pos.items()}, "groups": []}
    if viewport is not None:
        layout["viewport"] = viewport
    return {
        "format": "steerflow.workflow",
        "version": 1,
        "prompt": prompt,
        "layout": layout,
        "extra": {},
    }


def _server_messages(server: LiveServer, prompt: dict) -> dict[tuple[str, str], str]:
    """What the server says of each input of a prompt it refuses: {(node, input): details}."""
    req = urllib.request.Request(
        server.url + "/prompt",
        data=json.dumps({"prompt": prompt}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        urllib.request.urlopen(req, timeout=30)
    except urllib.error.HTTPError as e:
        body = json.loads(e.read())
    else:
        raise AssertionError("the server accepted a prompt naming missing models")
    return {
        (node, err["extra_info"]["input_name"]): err["details"]
        for node, entry in body["node_errors"].items()
        for err in entry["errors"]
        if err.get("extra_info", {}).get("input_name")
    }


def _row(c: Canvas, node: str, name: str):
    return c.node(node).locator(f'.sf-input[data-input="{name}"]')


# --- 1. Crop Image's box ------------------------------------------------------------------


def _open_crop(page, server: LiveServer) -> Canvas:
    from PIL import Image

    folder = server.base_dir / "input"
    folder.mkdir(parents=True, exist_ok=True)
    w, h = CROP_SIZE
    img = Image.new("RGB", (w, h))
    img.putdata([(x * 4, y * 5, 128) for y in range(h) for x in range(w)])
    img.save(folder / CROP_IMAGE)
    c = Canvas(page)
    c.open_file(
        "crop.json",
        _document(
            {
                "1": {"class_type": "LoadImage", "inputs": {"image": CROP_IMAGE}},
                # ComfyUI's default box, far larger than the image
                "2": {
                    "class_type": "ImageCropV2",
                    "inputs": {
                        "image": ["1", 0],
                        "crop_region": {"x": 0, "y": 0, "width": 512, "height": 512},
                    },
                },
                "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
            },
            {"1": [0, 0], "2": [320, 0], "3": [640, 0]},
        ),
    )
    frame = c.node("2").get_by_test_id("crop-frame")
    expect(frame).to_be_visible()
    page.wait_for_function(
        "f => f.querySelector('img').complete && f.querySelector('img').naturalWidth > 0",
        arg=frame.element_handle(),
    )
    return c


def _region(c: Canvas) -> dict:
    return c.document()["prompt"]["2"]["inputs"]["crop_region"]


def _drag_in(
    page, c: Canvas, a: tuple[float, float], b: tuple[float, float], alt: bool = False
) -> None:
    """Drag over the crop frame from `a` to `b`, fractions of its width and height."""
    r = c.settled_box(c.node("2").get_by_test_id("crop-frame"))
    if alt:
        page.keyboard.down("Alt")
    page.mouse.move(r["x"] + r["width"] * a[0], r["y"] + r["height"] * a[1])
    page.mouse.down()
    page.mouse.move(r["x"] + r["width"] * b[0], r["y"] + r["height"] * b[1], steps=10)
    page.mouse.up()
    if alt:
        page.keyboard.up("Alt")


def test_a_crop_box_covering_a_small_image_is_shown_cut_and_a_drag_in_it_draws_a_new_one(
    page, server: LiveServer
):
    c = _open_crop(page, server)
    node = c.node("2")
    # the 512x512 box shows as the part inside the 64x48 image, its cut sides marked and said
    frame = c.settled_box(node.get_by_test_id("crop-frame"))
    box = c.settled_box(node.get_by_test_id("crop-box"))
    assert abs(box["x"] - frame["x"]) < 1.5 and abs(box["y"] - frame["y"]) < 1.5
    assert abs(box["width"] - frame["width"]) < 1.5 and abs(box["height"] - frame["height"]) < 1.5
    expect(node.get_by_test_id("crop-box")).to_have_class(
        re.compile(r"\bsf-crop-cut-right\b.*\bsf-crop-cut-bottom\b")
    )
    expect(node.get_by_test_id("crop-info")).to_have_text("crop 64×48 of 64×48")
    expect(node.get_by_test_id("crop-note")).to_contain_text("512×512")
    expect(node.get_by_test_id("crop-hint")).to_have_text("drag on the image to draw a new box")
    assert (
        node.get_by_test_id("crop-box").evaluate("e => getComputedStyle(e).cursor") == "crosshair"
    )

    # a drag inside it (there is no image outside it) draws a new box: whole pixels, in the image
    _drag_in(page, c, (0.25, 0.25), (0.75, 0.75))
    expect(node.get_by_label("crop_region width", exact=True)).to_have_value("32")
    assert _region(c) == {"x": 16, "y": 12, "width": 32, "height": 24}
    expect(node.get_by_test_id("crop-info")).to_have_text("crop 32×24 of 64×48")
    expect(node.get_by_test_id("crop-note")).to_have_count(0)

    # a drag inside a smaller box moves it, as before; Alt-drag draws a new one over it
    _drag_in(page, c, (0.5, 0.5), (0.6, 0.5))
    expect(node.get_by_label("crop_region x", exact=True)).not_to_have_value("16")
    moved = _region(c)
    assert (moved["width"], moved["height"], moved["y"]) == (32, 24, 12) and moved["x"] > 16
    _drag_in(page, c, (0.45, 0.4), (0.55, 0.6), alt=True)
    expect(node.get_by_label("crop_region width", exact=True)).not_to_have_value("32")
    drawn = _region(c)
    assert all(isinstance(v, int) for v in drawn.values()), drawn
    assert (
        drawn["x"] >= 0 and drawn["x"] + drawn["width"] <= 64 and drawn["y"] + drawn["height"] <= 48
    )
    assert drawn["width"] < 16 and drawn["height"] < 16, drawn


# --- 2. missing models --------------------------------------------------------------------


def _missing_prompt() -> dict:
    doc = small_txt2img()
    prompt = doc["prompt"]
    prompt["4"]["inputs"]["ckpt_name"] = MISSING_CKPT
    prompt["3"]["inputs"]["sampler_name"] = (
        "euler_fast"  # no sampler of that name: an ordinary bad choice
    )
    prompt["10"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "model": ["4", 0],
            "clip": ["4", 1],
            "lora_name": MISSING_LORA,
            "strength_model": 1.0,
            "strength_clip": 1.0,
        },
    }
    prompt["3"]["inputs"]["model"] = ["10", 0]
    doc["layout"]["nodes"]["10"] = {"pos": [0, 700]}
    return doc


def test_models_the_server_lacks_are_marked_when_a_workflow_opens(page, server: LiveServer):
    doc = _missing_prompt()
    said = _server_messages(server, doc["prompt"])
    c = Canvas(page)
    c.open_file("missing.json", doc)
    expect(c.nodes()).to_have_count(len(doc["prompt"]))

    # on open, before any Queue: each missing model's widget says so, in the server's words
    toast = c.toasts().filter(has_text="models this workflow names are missing")
    expect(toast).to_contain_text(
        f"2 models this workflow names are missing: {MISSING_CKPT} (Load Checkpoint #4)"
    )
    expect(toast).to_contain_text(f"{MISSING_LORA} (Load LoRA #10)")
    expect(toast).not_to_contain_text("euler_fast")  # not a model
    for node, name in (("4", "ckpt_name"), ("10", "lora_name")):
        issue = _row(c, node, name).locator(".sf-issue")
        expect(issue).to_have_count(1)
        expect(issue).to_have_attribute("title", said[(node, name)])
        assert "(looked in models/" in said[(node, name)]
        expect(_row(c, node, name)).to_have_class(re.compile(r"\bsf-has-issue\b"))
        expect(c.widget(node, name).locator("option:checked")).to_have_text(
            re.compile(r"\(missing\)$")
        )
    # an ordinary combo's value that is no choice is marked as that, not as a missing model
    sampler = _row(c, "3", "sampler_name")
    expect(sampler.locator(".sf-issue")).to_have_attribute("title", said[("3", "sampler_name")])
    expect(c.widget("3", "sampler_name").locator("option:checked")).to_have_text(
        "euler_fast (not in list)"
    )

    # the refused Queue shows the same message once, not a second time
    c.queue()
    expect(c.toasts().filter(has_text="Prompt rejected")).to_be_visible()
    expect(c.node("4").locator(".sf-node")).to_have_class(re.compile(r"\bsf-error\b"))
    for node, name in (("4", "ckpt_name"), ("10", "lora_name"), ("3", "sampler_name")):
        expect(_row(c, node, name).locator(".sf-issue")).to_have_count(1)
        expect(_row(c, node, name).locator(".sf-issue")).to_have_attribute(
            "title", said[(node, name)]
        )

    # picking a model the server has takes the mark away
    c.widget("4", "ckpt_name").select_option("steerflow-shapes")
    expect(_row(c, "4", "ckpt_name").locator(".sf-issue")).to_have_count(0)


def test_comfyui_ui_and_api_files_naming_a_missing_checkpoint_are_marked_on_open(page):
    c = Canvas(page)
    c.open_file(
        "comfy.json",
        {
            "last_node_id": 9,
            "last_link_id": 1,
            "version": 0.4,
            "config": {},
            "extra": {},
            "groups": [],
            "nodes": [
                {
                    "id": 4,
                    "type": "CheckpointLoaderSimple",
                    "pos": [0, 0],
                    "size": [315, 98],
                    "mode": 0,
                    "outputs": [
                        {"name": "MODEL", "type": "MODEL", "links": None},
                        {"name": "CLIP", "type": "CLIP", "links": None},
                        {"name": "VAE", "type": "VAE", "links": [1]},
                    ],
                    "widgets_values": ["v1-5-pruned-emaonly-fp16.safetensors"],
                },
                {
                    "id": 9,
                    "type": "VAEDecode",
                    "pos": [400, 0],
                    "size": [210, 46],
                    "mode": 0,
                    "inputs": [
                        {"name": "samples", "type": "LATENT", "link": None},
                        {"name": "vae", "type": "VAE", "link": 1},
                    ],
                    "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": None}],
                },
            ],
            "links": [[1, 4, 2, 9, 1, "VAE"]],
        },
    )
    expect(c.toasts().filter(has_text="1 model this workflow names is missing")).to_contain_text(
        "v1-5-pruned-emaonly-fp16.safetensors (Load Checkpoint #4)"
    )
    expect(_row(c, "4", "ckpt_name").locator(".sf-issue")).to_contain_text(
        "input 'ckpt_name': 'v1-5-pruned-emaonly-fp16.safetensors' is not one of ["
    )

    # an API-format prompt (ComfyUI's Export (API)) as well
    c.open_file(
        "api.json",
        {
            "4": {
                "class_type": "CheckpointLoaderSimple",
                "inputs": {"ckpt_name": "dreamshaper_8.safetensors"},
            }
        },
    )
    expect(
        c.toasts().filter(
            has_text="1 model this workflow names is missing: dreamshaper_8.safetensors "
            "(Load Checkpoint #4)"
        )
    ).to_be_visible()
    expect(_row(c, "4", "ckpt_name").locator(".sf-issue")).to_contain_text(
        "'dreamshaper_8.safetensors'"
    )
    # a model picked: the notice goes with the mark (the veteran's walk: it stayed)
    c.widget("4", "ckpt_name").select_option("steerflow-shapes.safetensors")
    expect(_row(c, "4", "ckpt_name").locator(".sf-issue")).to_have_count(0)
    expect(c.toasts().filter(has_text="names is missing")).to_have_count(0, timeout=3_000)


# --- 3. one message per bad number --------------------------------------------------------


def test_a_bad_number_shows_one_message_while_editing_and_after_a_refused_queue(page):
    c = Canvas(page)
    c.open_file("numbers.json", small_txt2img())
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    steps = _row(c, "3", "steps")

    c.set_value("3", "steps", "-5")
    expect(steps.locator(".sf-issue")).to_have_count(1)
    expect(steps.locator(".sf-issue")).to_have_text("-5 is below the minimum 1")

    c.queue()
    expect(c.toasts().filter(has_text="Prompt rejected")).to_be_visible()
    expect(c.node("3").locator(".sf-node")).to_have_class(re.compile(r"\bsf-error\b"))
    expect(steps).to_contain_text("got -5")  # the server's message, which refused the run
    expect(steps.locator(".sf-issue")).to_have_count(1)

    # editing takes the server's message away: the widget's own describes the new value
    c.set_value("3", "steps", "-7")
    expect(steps.locator(".sf-issue")).to_have_count(1)
    expect(steps.locator(".sf-issue")).to_have_text("-7 is below the minimum 1")
    c.set_value("3", "steps", "3")
    expect(steps.locator(".sf-issue")).to_have_count(0)


# --- 4. long seeds ------------------------------------------------------------------------


def test_a_long_seed_shows_whole_without_changing_the_node(page):
    c = Canvas(page)
    c.open_file("seed.json", small_txt2img())
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    seed = c.widget("3", "seed")
    node = c.node("3")
    before = c.settled_box(node)
    field_before = c.settled_box(seed)
    for value in ("1125899906842624", str(2**53 - 1), str(2**64 - 1)):
        c.set_value("3", "seed", value)
        expect(seed).to_have_value(value)
        page.wait_for_function(
            "e => e.scrollWidth <= e.clientWidth", arg=seed.element_handle(), timeout=5_000
        )
        size = seed.evaluate("e => parseFloat(getComputedStyle(e).fontSize)")
        assert size >= 9, f"{value} is drawn at {size}px"
        box = c.settled_box(node)
        assert (
            abs(box["width"] - before["width"]) < 1 and abs(box["height"] - before["height"]) < 1
        ), (value, box, before)
        assert abs(c.settled_box(seed)["height"] - field_before["height"]) < 1
    # a short value is drawn at the size of the other fields again
    c.set_value("3", "seed", "42")
    steps_size = c.widget("3", "steps").evaluate("e => getComputedStyle(e).fontSize")
    expect(seed).to_have_css("font-size", steps_size)


# --- 5. the view an opened workflow gets --------------------------------------------------

FIT_MAX_ZOOM = 1.5  # web/src/lib/layout.ts


def _wait_fitted(page) -> dict:
    """The whole graph in view, centred, filling the pane (or at the largest zoom a fit uses)."""
    page.wait_for_function(
        f"() => {{ const f = ({FILL})(); return f.inside && Math.abs(f.dx) < 3"
        f" && Math.abs(f.dy) < 3 && (f.fill > 0.8 || f.zoom > {FIT_MAX_ZOOM} - 1e-3); }}",
        timeout=5_000,
    )
    return page.evaluate(FILL)


def test_an_example_opened_in_a_large_window_is_fitted_not_left_at_zoom_1(page):
    page.set_viewport_size({"width": 2560, "height": 1440})
    c = Canvas(page)
    c.open_example("txt2img.json")
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    fit = _wait_fitted(page)
    assert fit["zoom"] > 1.05, fit

    # an opened file and a dropped one get the same fit
    c.clear()
    c.open_file("opened.json", small_txt2img())
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    assert _wait_fitted(page)["zoom"] > 1.05
    page.evaluate("() => window.steerflow.setViewport({ x: 0, y: 0, zoom: 1 })")
    c.drop_file("dropped.json", json.dumps(small_txt2img()).encode(), "application/json")
    expect(c.toasts().filter(has_text="Opened dropped.json")).to_be_visible()
    assert _wait_fitted(page)["zoom"] > 1.05


def test_a_document_saved_looking_away_from_its_graph_opens_fitted(page):
    c = Canvas(page)
    doc = small_txt2img()
    doc["layout"]["viewport"] = {"x": -5000, "y": -5000, "zoom": 1}
    c.open_file("away.json", doc)
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    _wait_fitted(page)
    # a saved view that shows the graph is kept, as ComfyUI keeps a workflow's saved view
    doc["layout"]["viewport"] = {"x": 30, "y": 20, "zoom": 0.9}
    c.open_file("kept.json", doc)
    page.wait_for_timeout(600)
    vp = page.evaluate("() => window.steerflow.getViewport()")
    assert abs(vp["x"] - 30) < 0.5 and abs(vp["y"] - 20) < 0.5 and abs(vp["zoom"] - 0.9) < 1e-6, vp
