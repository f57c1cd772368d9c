"""ComfyUI's mouse gestures on Steerflow's canvas: a link dropped on a node (or one of its
widgets) links by type, Alt+drag clones a node, Ctrl+drag draws a selection box."""

from __future__ import annotations

import re

from playwright.sync_api import Locator, expect

from tests.e2e.canvas import Canvas

SELECTED = re.compile(r"\bselected\b")


def centre(c: Canvas, locator: Locator) -> tuple[float, float]:
    box = c.settled_box(locator)
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_link_dropped_on_a_node_or_a_widget_links_by_type(page):
    c = Canvas(page)
    ckpt = c.add_node("Load Checkpoint", 40, 60)
    sampler = c.add_node("Sample", 460, 40)
    num = c.add_node("Int", 40, 420)
    palette = page.get_by_role("dialog", name="Add node")
    # a MODEL dropped on the sampler's title goes into its model input (no palette, no copy)
    c.drag(c.out_handle(ckpt, 0), c.node(sampler).locator(".sf-header"))
    expect(c.edges()).to_have_count(1)
    expect(palette).to_have_count(0)
    # an INT dropped on the steps widget goes into steps (not into seed, the first INT)
    c.drag(c.out_handle(num, 0), c.widget(sampler, "steps"))
    expect(c.edges()).to_have_count(2)
    # a VAE: nothing on the sampler takes it, so no link, and the reason is said (as on a dot)
    c.drag(c.out_handle(ckpt, 2), c.node(sampler).locator(".sf-header"))
    refused = "Link refused: Sample has no input that takes VAE"
    expect(c.toasts().filter(has_text=refused)).to_have_count(1)
    expect(palette).to_have_count(0)
    expect(c.edges()).to_have_count(2)
    assert c.node_ids() == [ckpt, sampler, num]
    inputs = c.document()["prompt"][sampler]["inputs"]
    assert inputs["model"] == [ckpt, 0]
    assert inputs["steps"] == [num, 0]
    assert isinstance(inputs["seed"], int)


def test_link_dragged_from_an_input_onto_a_node_takes_its_matching_output(page):
    c = Canvas(page)
    ckpt = c.add_node("Load Checkpoint", 40, 60)
    decode = c.add_node("VAE Decode", 460, 60)
    c.drag(c.in_handle(decode, "vae"), c.node(ckpt).locator(".sf-header"))
    expect(c.edges()).to_have_count(1)
    expect(page.get_by_role("dialog", name="Add node")).to_have_count(0)
    assert c.document()["prompt"][decode]["inputs"]["vae"] == [ckpt, 2]
    # from an input onto a node with no output of its type: refused, with the reason
    c.drag(c.in_handle(decode, "samples"), c.node(ckpt).locator(".sf-header"))
    expect(c.toasts().filter(has_text="Load Checkpoint has no LATENT output")).to_have_count(1)
    expect(c.edges()).to_have_count(1)


def test_alt_drag_clones_the_node(page):
    c = Canvas(page)
    num, show = c.int_shown("7", int_x=40, show_x=460)
    before = c.settled_box(c.node(num))
    x, y = centre(c, c.node(num).locator(".sf-header"))
    page.keyboard.down("Alt")
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 10, y + 100, steps=4)
    page.mouse.move(x + 20, y + 260, steps=8)
    page.mouse.up()
    page.keyboard.up("Alt")

    expect(c.nodes()).to_have_count(3)
    (clone,) = set(c.node_ids()) - {num, show}
    # the original stays, with its link; the clone was dragged, with the value and no link
    assert c.settled_box(c.node(num)) == before
    moved = c.settled_box(c.node(clone))
    assert abs(moved["y"] - before["y"] - 260) < 4 and abs(moved["x"] - before["x"] - 20) < 4
    expect(c.node(clone)).to_have_class(SELECTED)
    expect(c.widget(clone, "value")).to_have_value("7")
    expect(c.edges()).to_have_count(1)
    prompt = c.document()["prompt"]
    assert prompt[show]["inputs"]["value"] == [num, 0]
    assert prompt[clone]["inputs"] == {"value": 7}
    # one undo step: the clone goes, the value typed before stays
    page.keyboard.press("Control+z")
    expect(c.nodes()).to_have_count(2)
    expect(c.widget(num, "value")).to_have_value("7")


def test_ctrl_drag_draws_a_selection_box(page):
    c = Canvas(page)
    a = c.add_node("Int", 40, 60)
    b = c.add_node("Int", 40, 320)
    far = c.add_node("Int", 800, 60)
    boxes = [c.settled_box(c.node(n)) for n in (a, b)]
    left = min(bx["x"] for bx in boxes) - 20
    top = min(bx["y"] for bx in boxes) - 20
    right = max(bx["x"] + bx["width"] for bx in boxes) + 20
    bottom = max(bx["y"] + bx["height"] for bx in boxes) + 20
    page.keyboard.down("Control")
    page.mouse.move(left, top)
    page.mouse.down()
    page.mouse.move(right, bottom, steps=10)
    page.mouse.up()
    page.keyboard.up("Control")
    expect(c.node(a)).to_have_class(SELECTED)
    expect(c.node(b)).to_have_class(SELECTED)
    expect(c.node(far)).not_to_have_class(SELECTED)
    assert len(c.node_ids()) == 3  # a selection, not a pan or a move


def test_shift_drag_moves_an_outputs_links_to_another_output(page):
    c = Canvas(page)
    first = c.add_node("Int", 40, 60)
    second = c.add_node("Int", 40, 300)
    show_a = c.add_node("Show Value", 460, 40)
    show_b = c.add_node("Show Value", 460, 300)
    c.connect(first, 0, show_a, "value")
    c.connect(first, 0, show_b, "value")
    expect(c.edges()).to_have_count(2)
    page.keyboard.down("Shift")
    c.drag(c.out_handle(first, 0), c.out_handle(second, 0))
    page.keyboard.up("Shift")
    prompt = c.document()["prompt"]
    assert prompt[show_a]["inputs"]["value"] == [second, 0]
    assert prompt[show_b]["inputs"]["value"] == [second, 0]
    expect(c.edges()).to_have_count(2)
    # dropped on a node with no output of that type: refused, with the reason
    ckpt = c.add_node("Load Checkpoint", 800, 300)
    page.keyboard.down("Shift")
    c.drag(c.out_handle(second, 0), c.node(ckpt).locator(".sf-header"))
    page.keyboard.up("Shift")
    expect(c.toasts().filter(has_text="Links not moved")).to_have_count(1)
    assert c.document()["prompt"][show_a]["inputs"]["value"] == [second, 0]
