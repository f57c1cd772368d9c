"""What a new user coming from ComfyUI runs into in their first minutes with the canvas."""

from __future__ import annotations

import json
import re
from pathlib import Path

from playwright.sync_api import expect

from tests.e2e.canvas import Canvas
from tests.e2e.conftest import LiveServer
from tests.e2e.test_canvas import TXT2IMG, small_txt2img

ISSUE = re.compile(r"\bsf-has-issue\b")


def _center(box: dict[str, float]) -> tuple[float, float]:
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_phone_window_keeps_the_canvas_and_every_toolbar_button(page):
    c = Canvas(page)
    c.open_file("phone.json", small_txt2img())
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    # the minimap's shade outside the view is dark, not React Flow's light grey
    mask = page.locator(".react-flow__minimap-mask")
    assert mask.evaluate("e => getComputedStyle(e).fill") == "rgba(0, 0, 0, 0.45)"

    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    pane = page.locator(".react-flow").bounding_box()
    assert pane is not None and pane["width"] >= 380, f"the canvas is {pane} wide on a phone"
    assert pane["height"] >= 300
    for button in page.locator(".sf-toolbar button").all():
        box = button.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (
            f"{button.inner_text()!r} is off screen: {box}")
    # the side panel (queue, history, gallery) is still there, under the canvas
    expect(page.get_by_role("tab", name="Gallery")).to_be_in_viewport()
    page.locator(".sf-toolbar").get_by_role("button", name="Examples", exact=True).click()
    expect(page.get_by_role("dialog", name="Examples")).to_be_visible()


def test_dragging_a_linked_inputs_dot_picks_up_its_link(page):
    """ComfyUI's way to detach or move a link: grab it by the input's dot."""
    c = Canvas(page)
    c.open_file("links.json", small_txt2img())
    expect(c.edges()).to_have_count(10)
    pane = c.pane_box()

    # dropped on empty canvas: detached, and the palette offers nodes to feed the input
    x, y = _center(c.settled_box(c.in_handle("3", "positive")))
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(pane["x"] + 300, pane["y"] + pane["height"] - 30, steps=12)
    page.mouse.up()
    palette = page.get_by_role("dialog", name="Add node")
    expect(palette).to_be_visible()
    page.keyboard.press("Escape")
    expect(c.edges()).to_have_count(9)
    assert "positive" not in c.document()["prompt"]["3"]["inputs"]

    # dropped on another input: moved there
    x, y = _center(c.settled_box(c.in_handle("3", "negative")))
    page.mouse.move(x, y)
    page.mouse.down()
    tx, ty = _center(c.settled_box(c.in_handle("3", "positive")))
    page.mouse.move(tx, ty, steps=12)
    page.mouse.up()
    expect(c.edges()).to_have_count(9)
    inputs = c.document()["prompt"]["3"]["inputs"]
    assert inputs["positive"] == ["7", 0] and "negative" not in inputs

    # undo puts both back
    page.locator(".react-flow__pane").click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+z")
    page.keyboard.press("Control+z")
    expect(c.edges()).to_have_count(10)
    inputs = c.document()["prompt"]["3"]["inputs"]
    assert inputs["positive"] == ["6", 0] and inputs["negative"] == ["7", 0]


def test_an_error_goes_when_the_user_fixes_its_input(page):
    c = Canvas(page)
    doc = small_txt2img()
    doc["prompt"]["3"]["inputs"]["seed"] = -1
    del doc["prompt"]["3"]["inputs"]["positive"]
    c.open_file("bad.json", doc)
    expect(c.edges()).to_have_count(9)
    c.queue()
    seed = c.node("3").locator('.sf-input[data-input="seed"]')
    positive = c.node("3").locator('.sf-input[data-input="positive"]')
    expect(seed).to_have_class(ISSUE)
    expect(seed).to_contain_text("got -1")
    expect(positive).to_have_class(ISSUE)
    expect(page.get_by_test_id("status")).to_contain_text("Prompt rejected")

    # typing a good seed takes the server's "got -1" away; the other error stays
    c.set_value("3", "seed", "5")
    expect(seed).not_to_have_class(ISSUE)
    expect(seed).not_to_contain_text("got -1")
    expect(positive).to_have_class(ISSUE)
    # linking the missing input takes its error away, and the node is no longer red
    c.connect("6", 0, "3", "positive")
    expect(c.edges()).to_have_count(10)
    expect(positive).not_to_have_class(ISSUE)
    expect(c.node("3").locator(".sf-node")).not_to_have_class(re.compile(r"\bsf-error\b"))

    # opening another workflow clears the status bar's old error
    c.open_file("other.json", small_txt2img())
    expect(page.get_by_test_id("status")).not_to_contain_text("Prompt rejected")


def test_clear_pending_empties_the_queue_and_export_api_downloads_the_prompt(
        page, server: LiveServer):
    c = Canvas(page)
    c.open_file("long.json", small_txt2img(steps=5000))
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))

    with page.expect_download() as dl:
        page.get_by_role("button", name="Export API", exact=True).click()
    assert dl.value.suggested_filename == "long_api.json"
    exported = json.loads(Path(dl.value.path()).read_text())
    assert exported == c.document()["prompt"]
    assert exported["3"]["class_type"] == "KSampler" and exported["3"]["inputs"]["steps"] == 5000

    try:
        page.get_by_label("queue count").fill("3")
        c.queue()
        queue = page.get_by_role("list", name="queue")
        expect(queue.locator(".sf-queue-item")).to_have_count(3, timeout=60_000)
        page.get_by_role("button", name=re.compile(r"^Clear pending \(\d\)$")).click()
        expect(queue.locator(".sf-queue-item")).to_have_count(1)
        assert server.get("/queue")["queue_pending"] == []
        queue.locator(".sf-queue-item").get_by_role("button", name="Interrupt").click()
        expect(queue.locator(".sf-queue-item")).to_have_count(0, timeout=60_000)
    finally:
        server.post("/queue", {"clear": True})
        server.post("/interrupt", {})


def test_first_visit_at_1280x720_shows_the_whole_default_graph(browser_context, server):
    """A laptop window: every node of the default graph is in view, at a readable zoom,
    so the image appears where the user is looking after the first Queue."""
    page = browser_context.new_page()
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto(server.url + "/")
    page.wait_for_function("() => document.querySelectorAll('.react-flow__node').length === 7")
    page.wait_for_timeout(500)  # the fit runs once the nodes are measured
    zoom = page.evaluate("() => window.steerflow.getViewport().zoom")
    assert zoom >= 0.8 - 1e-6
    pane = page.locator(".react-flow").bounding_box()
    assert pane is not None
    for node in page.locator(".react-flow__node").all():
        box = node.bounding_box()
        assert box is not None
        assert (box["x"] >= pane["x"] and box["y"] >= pane["y"]
                and box["x"] + box["width"] <= pane["x"] + pane["width"]
                and box["y"] + box["height"] <= pane["y"] + pane["height"]), (
            f"{node.inner_text()[:30]!r} is out of view: {box} in {pane}")
    page.close()
