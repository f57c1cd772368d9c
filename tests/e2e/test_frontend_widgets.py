"""ComfyUI's front-end widgets on the canvas: Crop Image's box (fields and a box dragged over
its input image), Image Compare's slider, Custom Combo's options (kept through save and load,
and read from a ComfyUI file), the colour picker, and the webcam (a fake camera; a refused one
is a message on the node)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.canvas import Canvas
from tests.e2e.conftest import CHROMIUM_ARGS, LiveServer, fresh_context

IMAGE = "crop_e2e.png"
IMAGE_SIZE = (64, 48)


def document(prompt: dict[str, Any], pos: dict[str, list[int]]) -> dict[str, Any]:
    return {"format": "steerflow.workflow", "version": 1, "prompt": prompt,
            "layout": {"nodes": {k: {"pos": v} for k, v in pos.items()}, "groups": []},
            "extra": {}}


def natural_size(page: Any, img: Any) -> tuple[int, int]:
    expect(img).to_be_visible(timeout=120_000)
    handle = img.element_handle()
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=handle)
    return tuple(handle.evaluate("el => [el.naturalWidth, el.naturalHeight]"))


def write_input_image(server: LiveServer) -> None:
    from PIL import Image

    folder = server.base_dir / "input"
    folder.mkdir(parents=True, exist_ok=True)
    w, h = IMAGE_SIZE
    img = Image.new("RGB", (w, h))
    img.putdata([(x * 4, y * 5, 128) for y in range(h) for x in range(w)])
    img.save(folder / IMAGE)


@pytest.mark.slow
def test_crop_box_fields_drag_run_and_compare(page, server: LiveServer):
    write_input_image(server)
    page.reload()  # the Load Image choices now hold the image
    page.wait_for_selector(".sf-dot.on")
    c = Canvas(page)
    c.open_file("crop.json", document({
        "1": {"class_type": "LoadImage", "inputs": {"image": IMAGE}},
        "3": {"class_type": "PreviewImage", "inputs": {}},
        "5": {"class_type": "ImageCompare", "inputs": {}},
    }, {"1": [0, 0], "3": [900, 0], "5": [900, 420]}))
    crop = c.add_node("Crop Image", 560, 120)
    c.connect("1", 0, crop, "image")
    c.connect(crop, 0, "3", "images")
    node = c.node(crop)

    # the input image shows with the box over it: the default 512x512 box is cut at its edges
    info = node.get_by_test_id("crop-info")
    expect(info).to_have_text("crop 64×48 of 64×48")
    for field, value in (("x", "8"), ("y", "4"), ("width", "40"), ("height", "24")):
        box = node.get_by_label(f"crop_region {field}", exact=True)
        box.fill(value)
        box.blur()
    expect(info).to_have_text("crop 40×24 of 64×48")
    bad = node.get_by_label("crop_region width", exact=True)
    bad.fill("0")  # out of bounds: kept and marked, as a number widget
    expect(bad).to_have_attribute("aria-invalid", "true")
    bad.fill("40")
    bad.blur()
    expect(bad).not_to_have_attribute("aria-invalid", "true")

    # drag the box to the top-left corner: it stops at the image's edge, its size kept
    rect = c.settled_box(node.get_by_test_id("crop-box"))
    page.mouse.move(rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2)
    page.mouse.down()
    page.mouse.move(rect["x"] - 200, rect["y"] - 200, steps=8)
    page.mouse.up()
    expect(node.get_by_label("crop_region x", exact=True)).to_have_value("0")
    expect(node.get_by_label("crop_region y", exact=True)).to_have_value("0")
    expect(info).to_have_text("crop 40×24 of 64×48")
    assert c.document()["prompt"][crop]["inputs"]["crop_region"] == {
        "x": 0, "y": 0, "width": 40, "height": 24}
    # the drag was one undo step
    node.locator(".sf-header").click()
    page.keyboard.press("Control+z")
    expect(node.get_by_label("crop_region x", exact=True)).to_have_value("8")
    expect(node.get_by_label("crop_region y", exact=True)).to_have_value("4")
    page.keyboard.press("Control+Shift+z")
    expect(node.get_by_label("crop_region x", exact=True)).to_have_value("0")

    # compare the input with the crop, then run: the crop is 40x24
    c.connect("1", 0, "5", "image_a")
    c.connect(crop, 0, "5", "image_b")
    expect(c.node("5").locator(".sf-compare-empty")).to_be_visible()
    c.queue()
    assert natural_size(page, c.node("3").locator("img.sf-output-image").first) == (40, 24)
    slider = c.node("5").get_by_role("slider", name="compare_view")
    expect(slider).to_be_visible(timeout=60_000)
    expect(slider.locator("img")).to_have_count(2)
    assert natural_size(page, slider.get_by_alt_text("image_a")) == IMAGE_SIZE
    assert natural_size(page, slider.get_by_alt_text("image_b")) == (40, 24)
    box = c.settled_box(slider)
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 2)
    expect(slider).to_have_attribute("aria-valuenow", "25")
    expect(c.node("5").locator("img.sf-output-image")).to_have_count(0)  # the slider shows them


@pytest.mark.slow
def test_custom_combo_options_survive_save_and_load_and_run(page, server: LiveServer):
    c = Canvas(page)
    combo = c.add_node("Custom Combo", 200, 150)
    node = c.node(combo)
    for k, text in enumerate(("red", "green", "blue"), start=1):
        node.get_by_label(f"option{k}", exact=True).fill(text)
    expect(node.get_by_label("option4", exact=True)).to_have_value("")  # a new empty box
    choice = node.get_by_label("choice", exact=True)
    expect(choice).to_have_value("red")  # the first option, once there is one
    choice.select_option("green")
    assert c.document()["prompt"][combo]["inputs"] == {
        "choice": "green", "index": 1, "option1": "red", "option2": "green",
        "option3": "blue", "option4": ""}
    node.get_by_label("remove option1").click()
    expect(node.get_by_label("option1", exact=True)).to_have_value("green")
    doc = c.document()
    assert doc["prompt"][combo]["inputs"] == {
        "choice": "green", "index": 0, "option1": "green", "option2": "blue", "option3": ""}

    # save / open: the options and the choice come back; a Preview Any shows the choice
    doc["prompt"]["50"] = {"class_type": "PreviewAny", "inputs": {"source": [combo, 0]}}
    doc["layout"]["nodes"]["50"] = {"pos": [700, 150]}
    c.clear()
    c.open_file("combo.json", doc)
    node = c.node(combo)
    expect(node.get_by_label("choice", exact=True)).to_have_value("green")
    expect(node.get_by_label("option2", exact=True)).to_have_value("blue")
    expect(node.get_by_label("option3", exact=True)).to_have_value("")
    c.queue()
    expect(c.node("50").locator(".sf-text")).to_have_text("green", timeout=60_000)

    # a ComfyUI workflow: widgets_values [choice, index, option1, ...]
    c.open_file("comfy_combo.json", {
        "last_node_id": 7, "last_link_id": 0, "links": [], "groups": [], "version": 0.4,
        "nodes": [{"id": 7, "type": "CustomCombo", "pos": [0, 0], "size": [300, 160], "mode": 0,
                   "outputs": [{"name": "STRING", "type": "STRING", "links": []},
                               {"name": "INDEX", "type": "INT", "links": []}],
                   "widgets_values": ["b", 1, "a", "b", ""]}]})
    node = c.node("7")
    expect(node.get_by_label("choice", exact=True)).to_have_value("b")
    expect(node.get_by_label("option1", exact=True)).to_have_value("a")
    expect(node.get_by_label("option2", exact=True)).to_have_value("b")
    assert c.document()["prompt"]["7"]["inputs"] == {
        "choice": "b", "index": 1, "option1": "a", "option2": "b", "option3": ""}


def test_color_picker_and_a_refused_camera(page):
    c = Canvas(page)
    color = c.add_node("Color Picker", 200, 150)
    node = c.node(color)
    node.get_by_label("color picker", exact=True).fill("#00ff80")
    expect(node.get_by_label("color", exact=True)).to_have_value("#00ff80")
    field = node.get_by_label("color", exact=True)
    field.fill("green")
    expect(node.locator(".sf-widget-issue")).to_contain_text("#RRGGBB")
    field.fill("#00ff8080")
    node.get_by_label("color picker", exact=True).fill("#112233")  # the typed alpha is kept
    expect(field).to_have_value("#11223380")

    # headless chromium without a camera: a message on the node, never a broken canvas
    cam = c.add_node("Webcam Capture", 200, 450)
    expect(c.node(cam).locator(".sf-webcam-note[role=alert]")).to_be_visible()
    expect(c.node(cam).get_by_role("button", name="Capture", exact=True)).to_be_disabled()
    expect(c.node(cam).get_by_role("button", name="Retry")).to_be_visible()


@pytest.fixture
def camera_page(chromium: str, server: LiveServer) -> Iterator[Any]:
    """A page of a chromium with a fake camera, allowed without asking."""
    args = (*CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
    with fresh_context(args) as ctx:
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.wait_for_selector(".sf-dot.on")
        yield page
        assert not errors, f"uncaught errors in the page: {errors}"


@pytest.mark.slow
def test_webcam_capture_button_and_capture_on_queue(camera_page, server: LiveServer):
    c = Canvas(camera_page)
    c.open_file("webcam.json", document({
        "1": {"class_type": "WebcamCapture", "inputs": {
            "image": "", "width": 320, "height": 240, "capture_on_queue": False}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }, {"1": [0, 0], "2": [600, 0]}))
    node = c.node("1")
    capture = node.get_by_role("button", name="Capture", exact=True)
    expect(capture).to_be_enabled(timeout=30_000)  # the fake camera is live
    capture.click()
    value = node.get_by_test_id("webcam-value")
    expect(value).to_have_text(re.compile(r"^webcam/\d+\.png \[temp\]$"))
    first = value.inner_text()
    assert c.document()["prompt"]["1"]["inputs"]["image"] == first
    c.queue()
    assert natural_size(camera_page, c.node("2").locator("img.sf-output-image").first) == (320, 240)

    # capture_on_queue: Queue takes a new capture and sends it in the prompt (the value stays,
    # as in ComfyUI, so "queue on change" does not see a change)
    toggle = node.get_by_label("capture_on_queue", exact=True)
    toggle.click()  # (check() fails at once if a re-render of the node takes the click)
    try:  # (read at once, the box may not show the click yet: a second click undid it)
        expect(toggle).to_be_checked(timeout=3_000)
    except AssertionError:
        toggle.click()
    expect(toggle).to_be_checked()
    camera_page.wait_for_timeout(20)  # a new millisecond name
    c.queue()
    sent = node.get_by_test_id("webcam-queued")
    expect(sent).to_have_text(re.compile(r"^sent on Queue: webcam/\d+\.png \[temp\]$"))
    name = sent.inner_text().removeprefix("sent on Queue: ")
    assert name != first
    expect(value).to_have_text(first)

    def sent_images() -> list[Any]:  # the server is shared: other tests' prompts are there too
        return [(e["prompt"][2].get("1") or {}).get("inputs", {}).get("image")
                for e in server.get("/history").values()]

    deadline = time.monotonic() + 60
    while name not in sent_images():
        assert time.monotonic() < deadline, "the capture never reached a prompt"
        time.sleep(0.3)
