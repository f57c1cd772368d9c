"""The mask editor: paint a mask on Load Image's image, save it into the node, run it."""

from __future__ import annotations

import io
import json
import re
from urllib.parse import urlencode

from playwright.sync_api import expect

from tests.e2e.canvas import Canvas
from tests.e2e.conftest import LiveServer

#: the number of pixels of the editor's mask layer with any mask on them
MASKED_PIXELS = """c => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
    return n;
}"""


def _upload(page, c: Canvas, node: str, path) -> None:
    with page.expect_file_chooser() as fc:
        c.node(node).get_by_role("button", name="Upload").click()
    fc.value.set_files(str(path))
    expect(c.widget(node, "image")).to_have_value(path.name)


def _stroke(page, editor, a: tuple[float, float], b: tuple[float, float]) -> None:
    """Drag the brush from `a` to `b`, fractions of the shown image's width and height."""
    box = editor.locator(".sf-maskeditor-stage img").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * a[0], box["y"] + box["height"] * a[1])
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * b[0], box["y"] + box["height"] * b[1], steps=12)
    page.mouse.up()


def test_mask_editor_paints_saves_and_load_image_outputs_the_mask(page, server: LiveServer,
                                                                    tmp_path):
    from PIL import Image

    path = tmp_path / "mask-me.png"
    Image.new("RGB", (128, 32), (40, 90, 160)).save(path)  # wide: the editor fits it
    c = Canvas(page)
    node = c.add_node("Load Image", 60, 60)
    _upload(page, c, node, path)

    # right-click the image preview: the node's menu opens the editor
    c.node(node).locator("img.sf-upload-preview").click(button="right")
    page.get_by_role("menuitem", name="Open in MaskEditor").click()
    editor = page.get_by_role("dialog", name="Mask editor")
    expect(editor).to_be_visible()
    expect(editor).to_have_attribute("data-size", "128x32")
    layer = editor.locator("canvas")
    assert layer.evaluate(MASKED_PIXELS) == 0  # the image has no alpha: no mask yet
    shown = editor.locator(".sf-maskeditor-stage img").bounding_box()
    assert shown is not None and shown["width"] > 600  # fitted to the window, grown

    # the brush circle follows the pointer
    box = editor.get_by_test_id("mask-canvas").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    expect(editor.locator(".sf-maskeditor-cursor")).to_be_visible()

    # a stroke, undone with Ctrl+Z (the graph's undo is not touched), and painted again
    _stroke(page, editor, (0.1, 0.5), (0.5, 0.5))
    painted = layer.evaluate(MASKED_PIXELS)
    assert painted > 100
    page.keyboard.press("Control+z")
    assert layer.evaluate(MASKED_PIXELS) == 0
    expect(c.nodes()).to_have_count(1)
    _stroke(page, editor, (0.1, 0.5), (0.5, 0.5))
    assert layer.evaluate(MASKED_PIXELS) == painted

    # a failed upload says why and keeps the editor and the painting
    page.route("**/upload/mask*", lambda route: route.fulfill(
        status=507, content_type="application/json",
        body=json.dumps({"error": {"type": "write_failed", "message": "disk full"}})))
    editor.get_by_role("button", name="Save", exact=True).click()
    expect(c.toasts().filter(has_text="Cannot save the mask")).to_be_visible()
    expect(editor).to_be_visible()
    assert layer.evaluate(MASKED_PIXELS) == painted
    expect(c.widget(node, "image")).to_have_value("mask-me.png")
    page.unroute("**/upload/mask*")

    editor.get_by_role("button", name="Save", exact=True).click()
    expect(editor).to_be_hidden()
    field = c.widget(node, "image")
    expect(field).to_have_value(re.compile(r"^clipspace/clipspace-mask-\d+.*\.png \[input\]$"))
    value = c.document()["prompt"][node]["inputs"]["image"]
    assert value == field.input_value()

    # the saved file: the original's colours, transparent where painted
    name = value.removesuffix(" [input]").removeprefix("clipspace/")
    saved = Image.open(io.BytesIO(server.get_bytes("/view?" + urlencode(
        {"filename": name, "subfolder": "clipspace", "type": "input"}))))
    assert saved.mode == "RGBA" and saved.size == (128, 32)
    assert saved.getpixel((30, 16))[3] == 0  # painted
    assert saved.getpixel((120, 2)) == (40, 90, 160, 255)  # untouched

    # Load Image → Preview Mask: the MASK output is what was painted
    preview = c.add_node("Preview Mask", 460, 60)
    c.connect(node, 1, preview, "mask")
    expect(c.edges()).to_have_count(1)
    c.queue()
    shown_mask = c.node(preview).locator("img").first
    expect(shown_mask).to_be_visible(timeout=120_000)
    src = shown_mask.get_attribute("src") or ""
    query = src[src.index("?") + 1:]
    mask = Image.open(io.BytesIO(server.get_bytes(f"/view?{query}"))).convert("L")
    assert mask.size == (128, 32)
    assert mask.getpixel((30, 16)) > 250
    assert mask.getpixel((120, 2)) == 0

    # reopened on the saved image, the editor shows the mask to go on with; Escape
    # closes it without changes
    c.node(node).get_by_role("button", name="Open in MaskEditor").click()
    expect(editor).to_be_visible()
    page.wait_for_function("c => c && c.width === 128", arg=layer.element_handle())
    page.wait_for_function(f"c => ({MASKED_PIXELS})(c) > 100", arg=layer.element_handle())
    _stroke(page, editor, (0.6, 0.2), (0.9, 0.8))
    page.keyboard.press("Escape")
    expect(editor).to_be_hidden()
    expect(field).to_have_value(value)
    expect(c.nodes()).to_have_count(2)


def test_mask_editor_refuses_an_image_too_big_to_paint(page, tmp_path):
    from PIL import Image

    path = tmp_path / "too-wide.png"
    Image.new("L", (4100, 8), 128).save(path)
    c = Canvas(page)
    node = c.add_node("Load Image", 60, 60)
    _upload(page, c, node, path)
    c.node(node).get_by_role("button", name="Open in MaskEditor").click()
    editor = page.get_by_role("dialog", name="Mask editor")
    expect(editor.get_by_role("alert")).to_contain_text("4100×8 pixels")
    expect(editor.get_by_role("alert")).to_contain_text("at most 4096")
    editor.get_by_role("button", name="Close").click()
    expect(editor).to_be_hidden()
    expect(c.widget(node, "image")).to_have_value("too-wide.png")


def test_the_editor_keeps_the_keyboard_and_its_button_keeps_clear(page, tmp_path):
    """While the editor is open no key reaches the graph (Ctrl+Enter queued the unmasked
    image); Space on a focused toolbar button pans, it does not press the button again
    (Invert flipped the mask back); the Mask button never covers Upload (a 40:1 image's
    preview is a few pixels high)."""
    from PIL import Image

    path = tmp_path / "very-wide.png"
    Image.new("RGB", (4000, 100), (40, 90, 160)).save(path)
    c = Canvas(page)
    node = c.add_node("Load Image", 60, 60)
    _upload(page, c, node, path)
    upload = c.node(node).get_by_role("button", name="Upload").bounding_box()
    mask_button = c.node(node).get_by_role("button", name="Open in MaskEditor").bounding_box()
    assert upload is not None and mask_button is not None
    assert mask_button["y"] >= upload["y"] + upload["height"]  # below it, never on it

    c.node(node).get_by_role("button", name="Open in MaskEditor").click()
    editor = page.get_by_role("dialog", name="Mask editor")
    expect(editor).to_be_visible()
    layer = editor.locator("canvas")
    editor.get_by_role("button", name="Invert").click()  # focus stays on the button
    inverted = layer.evaluate(MASKED_PIXELS)
    assert inverted > 0
    page.keyboard.down(" ")
    page.keyboard.up(" ")
    assert layer.evaluate(MASKED_PIXELS) == inverted  # Space did not press Invert again
    page.keyboard.press("e")  # the tool keys work with a button focused
    expect(editor.get_by_role("button", name="Eraser")).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("Control+Enter")
    page.wait_for_timeout(800)
    expect(page.get_by_text("Queued prompt")).to_have_count(0)
    page.keyboard.press("Escape")
    expect(editor).to_have_count(0)


def test_delete_with_a_nodes_menu_open_deletes_nothing(page):
    """Delete with a node's right-click menu open removed the node, and the menu, gone
    from the screen, still held the keyboard: no shortcut worked until Escape."""
    c = Canvas(page)
    node = c.add_node("Load Image", 60, 60)
    page.wait_for_timeout(1000)  # the added node is a settled undo step
    c.node(node).locator(".sf-header").click(button="right")
    expect(page.get_by_role("menu")).to_be_visible()
    page.keyboard.press("Delete")
    expect(c.nodes()).to_have_count(1)
    page.keyboard.press("Escape")
    expect(page.get_by_role("menu")).to_have_count(0)
    c.node(node).locator(".sf-header").click()
    page.keyboard.press("Delete")
    expect(c.nodes()).to_have_count(0)
    page.locator(".react-flow__pane").click(position={"x": 5, "y": 5})
    page.wait_for_timeout(1000)  # the canvas's history settles edits for a moment
    page.keyboard.press("Control+z")  # the keyboard is the canvas's again
    expect(c.nodes()).to_have_count(1)


def test_the_editors_toolbar_is_one_line_at_desktop_widths(page, tmp_path):
    """The first-time walk: at 1280 px the toolbar wrapped (Cancel and Save on a second row,
    "Fit +" apart from "−" when the file name was longer)."""
    from PIL import Image

    path = tmp_path / "a_rather_long_file_name_for_the_mask_editor_title.png"
    Image.new("RGB", (64, 64), (40, 90, 160)).save(path)
    c = Canvas(page)
    node = c.add_node("Load Image", 60, 60)
    _upload(page, c, node, path)
    c.node(node).get_by_role("button", name="Open in MaskEditor").click()
    bar = page.get_by_role("toolbar", name="Mask tools")
    for width in (1920, 1280, 1024):  # (below 1200 px it may wrap, every button in view)
        page.set_viewport_size({"width": width, "height": 800})
        page.wait_for_timeout(100)
        boxes = bar.evaluate("b => [...b.children].map(e => e.getBoundingClientRect())"
                             ".filter(r => r.height > 4).map(r => [r.top, r.bottom])")
        # one line: no item starts below the bottom of another
        assert width < 1200 or max(t for t, _ in boxes) < min(b for _, b in boxes), \
            f"the toolbar wraps at {width} px: {boxes}"
        save = bar.get_by_role("button", name="Save").bounding_box()
        assert save is not None and save["x"] + save["width"] <= width
    page.keyboard.press("Escape")
