"""Context menus on the canvas, a node and a link; detaching a link by dragging it off its input."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.canvas import Canvas

BYPASS = re.compile(r"\bsf-bypass\b")

INT_CHAIN = {  # Int 5 -> Int Math (a + 4) -> Show Value
    "format": "steerflow.workflow", "version": 1,
    "prompt": {
        "1": {"class_type": "PrimitiveInt", "inputs": {"value": 5}},
        "2": {"class_type": "IntMath", "inputs": {"a": ["1", 0], "b": 4, "op": "add"}},
        "3": {"class_type": "ShowValue", "inputs": {"value": ["2", 0]}},
    },
    "layout": {"nodes": {"1": {"pos": [0, 0]}, "2": {"pos": [340, 0]}, "3": {"pos": [680, 0]}},
               "groups": []},
    "extra": {},
}


def _node_menu(page, c: Canvas, node_id: str):
    c.node(node_id).locator(".sf-header").click(button="right")
    menu = page.get_by_role("menu", name="node menu")
    expect(menu).to_be_visible()
    return menu


def test_canvas_menu_adds_a_node_by_category(page):
    c = Canvas(page)
    box = c.pane_box()
    page.mouse.click(box["x"] + 300, box["y"] + 200, button="right")
    menu = page.get_by_role("menu", name="pane menu")
    menu.get_by_role("menuitem", name="Add node").hover()
    page.get_by_role("menuitem", name="utils/primitive", exact=True).hover()
    page.get_by_role("menuitem", name="Int", exact=True).click()
    expect(c.nodes()).to_have_count(1)
    assert c.document()["prompt"]["1"]["class_type"] == "PrimitiveInt"
    expect(menu).to_be_hidden()


@pytest.mark.slow
def test_node_menu_bypasses_and_the_run_honours_it(page):
    c = Canvas(page)
    c.open_file("chain.json", INT_CHAIN)
    expect(c.nodes()).to_have_count(3)
    _node_menu(page, c, "2").get_by_role("menuitem", name=re.compile("^Bypass")).click()
    expect(c.node("2").locator(".sf-node")).to_have_class(BYPASS)
    assert c.document()["prompt"]["2"]["mode"] == "bypass"
    c.queue()
    # Int Math is passed through: Show Value gets the Int's 5, not 5 + 4
    expect(c.node("3").locator(".sf-text")).to_have_text("5", timeout=60_000)
    # and made active again from the same menu
    _node_menu(page, c, "2").get_by_role("menuitem", name=re.compile("^Bypass")).click()
    expect(c.node("2").locator(".sf-node")).not_to_have_class(BYPASS)
    c.queue()
    expect(c.node("3").locator(".sf-text")).to_have_text("9", timeout=60_000)


def test_node_menu_rename_colour_pin_clone_remove(page):
    c = Canvas(page)
    c.open_file("chain.json", INT_CHAIN)
    expect(c.nodes()).to_have_count(3)
    menu = _node_menu(page, c, "1")
    menu.get_by_role("menuitem", name="Rename…").click()
    box = page.get_by_label("new title")
    box.fill("Base value")
    box.press("Enter")
    expect(c.node("1").locator(".sf-title")).to_have_text("Base value")

    _node_menu(page, c, "1").get_by_role("menuitem", name="Colour").hover()
    page.get_by_role("menuitem", name="green", exact=True).click()
    expect(c.node("1").locator(".sf-header")).to_have_css("background-color", "rgb(51, 85, 51)")

    _node_menu(page, c, "1").get_by_role("menuitem", name="Pin").click()
    before = c.document()["layout"]["nodes"]["1"]["pos"]
    header = c.node("1").locator(".sf-header").bounding_box()
    page.mouse.move(header["x"] + 30, header["y"] + 8)
    page.mouse.down()
    page.mouse.move(header["x"] + 230, header["y"] + 208, steps=6)
    page.mouse.up()
    assert c.document()["layout"]["nodes"]["1"]["pos"] == before  # a pinned node stays put

    _node_menu(page, c, "2").get_by_role("menuitem", name="Clone").click()
    expect(c.nodes()).to_have_count(4)
    doc = c.document()
    assert doc["prompt"]["4"]["class_type"] == "IntMath"
    assert doc["prompt"]["4"]["inputs"]["a"] == ["1", 0]  # the clone keeps its input links
    lay = doc["layout"]["nodes"]["1"]
    assert lay["title"] == "Base value" and lay["pinned"] is True and lay["color"] == "#335533"

    _node_menu(page, c, "4").get_by_role("menuitem", name="Remove").click()
    expect(c.nodes()).to_have_count(3)


def test_link_menu_deletes_and_dragging_a_link_off_its_input_detaches_it(page):
    c = Canvas(page)
    c.open_file("chain.json", INT_CHAIN)
    expect(c.edges()).to_have_count(2)
    # right-click the middle of the Int Math -> Show Value link
    path = page.locator('.react-flow__edge[data-id="2:0->3:value"] path').first
    c.settled_box(path)  # the view fits over a few frames after opening
    mid = path.evaluate("p => { const l = p.getTotalLength(); const pt = p.getPointAtLength(l / 2);"
                        " const m = p.getScreenCTM();"
                        " return {x: pt.x * m.a + m.e, y: pt.y * m.d + m.f}; }")
    page.mouse.click(mid["x"], mid["y"], button="right")
    page.get_by_role("menu", name="edge menu").get_by_role("menuitem", name="Delete link").click()
    expect(c.edges()).to_have_count(1)
    assert "value" not in c.document()["prompt"]["3"]["inputs"]

    # drag the Int -> a link's end off Int Math's input and drop it on empty canvas: detached
    handle = c.settled_box(c.in_handle("2", "a"))
    page.mouse.move(handle["x"] - 4, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    box = c.pane_box()
    page.mouse.move(box["x"] + 200, box["y"] + box["height"] - 80, steps=10)
    page.mouse.up()
    expect(c.edges()).to_have_count(0)
    assert c.document()["prompt"]["2"]["inputs"].get("a") != ["1", 0]


def test_ctrl_shift_v_pastes_with_input_links(page):
    c = Canvas(page)
    c.open_file("chain.json", INT_CHAIN)
    expect(c.nodes()).to_have_count(3)
    c.node("2").locator(".sf-header").click()
    page.keyboard.press("Control+c")
    box = c.pane_box()
    page.mouse.move(box["x"] + 400, box["y"] + 400)
    page.keyboard.press("Control+v")  # plain paste: no links
    expect(c.nodes()).to_have_count(4)
    page.keyboard.press("Control+Shift+v")  # with the links into the copied node
    expect(c.nodes()).to_have_count(5)
    prompt = c.document()["prompt"]
    assert "a" not in prompt["4"]["inputs"] or prompt["4"]["inputs"]["a"] != ["1", 0]
    assert prompt["5"]["inputs"]["a"] == ["1", 0]


def test_the_menus_work_from_the_keyboard(page):
    """The second walk: a menu opened with Shift+F10 (or a right-click) kept the focus on
    the page; arrows did nothing and Tab went to the nodes behind it."""
    c = Canvas(page)
    c.open_file("keys.json", INT_CHAIN)
    expect(c.nodes()).to_have_count(3)
    box = c.pane_box()
    page.mouse.click(box["x"] + box["width"] - 30, box["y"] + 30, button="right")
    menu = page.get_by_role("menu", name="pane menu")
    expect(menu.get_by_role("menuitem", name="Add node")).to_be_focused()
    page.keyboard.press("ArrowRight")  # its categories
    categories = menu.get_by_role("menu", name="Add node")
    expect(categories).to_be_visible()
    assert categories.evaluate("m => m.contains(document.activeElement)")
    page.keyboard.press("Escape")  # back to Add node, the menu still open
    expect(categories).to_be_hidden()
    expect(menu.get_by_role("menuitem", name="Add node")).to_be_focused()
    page.keyboard.press("Tab")  # stays in the menu
    assert menu.evaluate("m => m.contains(document.activeElement)")
    page.keyboard.press("Escape")
    expect(menu).to_be_hidden()
    # a node's menu, opened from the keyboard on the focused node: End, Enter removes it
    c.node("3").focus()
    page.keyboard.press("Shift+F10")
    node_menu = page.get_by_role("menu", name="node menu")
    expect(node_menu).to_be_visible()
    page.keyboard.press("End")
    expect(node_menu.get_by_role("menuitem", name="Remove")).to_be_focused()
    page.keyboard.press("Enter")
    expect(c.nodes()).to_have_count(2)
