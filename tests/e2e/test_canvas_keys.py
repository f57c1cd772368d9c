"""ComfyUI's canvas keys on Steerflow's canvas: Alt+C collapses, P pins, Ctrl+Shift+Enter
queues at the front, Space+drag pans over a node, a link with the keyboard focus shows it
and Delete removes that link alone, and ".", Alt+=, Q / H do what they do in ComfyUI."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.canvas import Canvas

COLLAPSED = re.compile(r"\bsf-collapsed\b")
PINNED = re.compile(r"\bsf-pinned\b")
SELECTED = re.compile(r"\bselected\b")

GRAPH = {  # an API prompt: 5 + 4, shown
    "1": {"class_type": "PrimitiveInt", "inputs": {"value": 5}},
    "2": {"class_type": "IntMath", "inputs": {"a": ["1", 0], "b": 4, "op": "add"}},
    "3": {"class_type": "ShowValue", "inputs": {"value": ["2", 0]}},
}


def _viewport(page) -> dict[str, float]:
    return page.evaluate("() => window.steerflow.getViewport()")


def _positions(c: Canvas) -> dict[str, list[int]]:
    return {k: v["pos"] for k, v in c.document()["layout"]["nodes"].items()}


def test_comfyui_canvas_keys(page, server):
    c = Canvas(page)
    c.open_file("keys.json", GRAPH)
    expect(c.nodes()).to_have_count(3)
    expect(c.edges()).to_have_count(2)
    header = c.node("2").locator(".sf-header")

    # 1. Alt+C collapses the selected node to its title, and expands it again; P pins it
    header.click()
    expect(c.node("2").locator(".sf-node")).to_have_class(SELECTED)
    page.keyboard.press("Alt+c")
    expect(c.node("2").locator(".sf-node")).to_have_class(COLLAPSED)
    expect(c.widget("2", "b")).to_be_hidden()
    page.keyboard.press("Alt+c")
    expect(c.node("2").locator(".sf-node")).not_to_have_class(COLLAPSED)
    page.keyboard.press("p")
    expect(c.node("2").locator(".sf-node")).to_have_class(PINNED)
    page.keyboard.press("p")
    expect(c.node("2").locator(".sf-node")).not_to_have_class(PINNED)
    # ...but not while typing in a text field
    field = c.widget("2", "b")
    field.click()
    page.keyboard.press("p")
    expect(c.node("2").locator(".sf-node")).not_to_have_class(PINNED)
    expect(field).to_have_value(re.compile("p"))  # the key typed, not a shortcut
    c.set_value("2", "b", "4")

    # 3. Space+drag pans the canvas even when the drag starts over a node: the node stays put
    pane = c.pane_box()
    page.mouse.click(pane["x"] + pane["width"] / 2, pane["y"] + 12)  # empty canvas: no selection
    expect(c.node("2").locator(".sf-node")).not_to_have_class(SELECTED)
    before_vp = _viewport(page)
    before_pos = _positions(c)
    box = c.settled_box(header)
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.keyboard.down("Space")
    expect(page.locator(".sf-canvas")).to_have_class(re.compile(r"\bsf-space-held\b"))
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 120, y + 80, steps=10)
    page.mouse.up()
    page.keyboard.up("Space")
    expect(page.locator(".sf-canvas")).not_to_have_class(re.compile(r"\bsf-space-held\b"))
    after_vp = _viewport(page)
    assert abs(after_vp["x"] - before_vp["x"] - 120) < 2, (before_vp, after_vp)
    assert abs(after_vp["y"] - before_vp["y"] - 80) < 2, (before_vp, after_vp)
    assert after_vp["zoom"] == before_vp["zoom"]
    assert _positions(c) == before_pos
    # the press selected nothing
    expect(c.node("2").locator(".sf-node")).not_to_have_class(SELECTED)
    # without Space, the same drag moves the node and not the view
    box = c.settled_box(header)
    page.mouse.move(box["x"] + 20, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + 60, box["y"] + box["height"] / 2 + 30, steps=6)
    page.mouse.up()
    assert _viewport(page) == after_vp
    assert _positions(c)["2"] != before_pos["2"]

    # ".", Alt+= / Alt+- (ComfyUI's fit and zoom keys)
    page.keyboard.press("Alt+Equal")
    page.wait_for_function("z => window.steerflow.getViewport().zoom > z", arg=after_vp["zoom"])
    zoomed = _viewport(page)["zoom"]
    page.keyboard.press("Alt+Minus")
    page.wait_for_function("z => window.steerflow.getViewport().zoom < z", arg=zoomed)
    page.keyboard.press("Alt+Minus")
    page.wait_for_timeout(300)
    out = _viewport(page)
    page.keyboard.press("Period")
    page.wait_for_function("z => window.steerflow.getViewport().zoom > z", arg=out["zoom"])

    # Q and H toggle the side panel on the queue / history tab
    side = page.get_by_test_id("side-panel")
    page.keyboard.press("h")
    expect(side.get_by_role("tab", name="History")).to_have_attribute("aria-selected", "true")
    page.keyboard.press("q")
    expect(side.get_by_role("tab", name="Queue")).to_have_attribute("aria-selected", "true")
    page.keyboard.press("q")
    expect(side).to_have_class(re.compile(r"\bsf-side-collapsed\b"))
    page.keyboard.press("q")
    expect(side.get_by_role("tab", name="Queue")).to_have_attribute("aria-selected", "true")

    # 2. Ctrl+Shift+Enter queues at the front of the queue: POST /prompt with "front": true
    with page.expect_response(lambda r: r.url.split("?")[0].endswith("/prompt")
                              and r.request.method == "POST") as resp:
        page.keyboard.press("Control+Shift+Enter")
    body = resp.value.request.post_data_json
    assert body["front"] is True
    reply = resp.value.json()
    assert reply["number"] < 0, reply  # before every waiting prompt, as in ComfyUI
    expect(c.toasts().filter(has_text="at the front of the queue")).to_be_visible()
    expect(c.node("3")).to_contain_text("9", timeout=60_000)
    # Ctrl+Enter still queues at the back
    with page.expect_response(lambda r: r.url.split("?")[0].endswith("/prompt")
                              and r.request.method == "POST") as resp:
        c.queue()
    assert "front" not in resp.value.request.post_data_json
    assert resp.value.json()["number"] > 0

    # 4. A link that has the keyboard focus shows it; Delete removes that link, not the selection
    c.node("1").locator(".sf-header").click()
    expect(c.node("1").locator(".sf-node")).to_have_class(SELECTED)
    edges = c.edges()
    edges.nth(1).focus()
    page.keyboard.press("Shift+Tab")  # the keyboard moves the focus to the first link
    focused = page.evaluate(
        "() => document.activeElement?.closest('.react-flow__edge')?.dataset.id ?? null")
    assert focused == edges.nth(0).get_attribute("data-id")
    path = edges.nth(0).locator(".react-flow__edge-path")
    assert path.evaluate("p => getComputedStyle(p).strokeWidth") == "5px"
    assert "drop-shadow" in path.evaluate("p => getComputedStyle(p).filter")
    other = edges.nth(1).locator(".react-flow__edge-path")
    assert other.evaluate("p => getComputedStyle(p).strokeWidth") != "5px"
    page.keyboard.press("Delete")
    expect(c.edges()).to_have_count(1)
    expect(page.locator(f'.react-flow__edge[data-id="{focused}"]')).to_have_count(0)
    expect(c.nodes()).to_have_count(3)  # the selected node stays
    # with no link focused, Delete removes the selection as before
    c.node("1").locator(".sf-header").click()
    page.keyboard.press("Delete")
    expect(c.nodes()).to_have_count(2)


def test_ctrl_enter_keeps_the_node_just_clicked_selected(page, server):
    """React Flow takes Enter on a focused node as a click with Ctrl (its multi-selection
    key) held: Ctrl+Enter unselected the node just clicked, so a Ctrl+B after queueing did
    nothing. As in ComfyUI, queueing keeps the selection."""
    c = Canvas(page)
    c.open_file("keep.json", GRAPH)
    node = c.node("2")
    node.locator(".sf-header").click()
    expect(node).to_have_class(SELECTED)
    page.keyboard.press("Control+Enter")
    expect(page.get_by_text("Queued prompt").first).to_be_visible(timeout=10_000)
    expect(node).to_have_class(SELECTED)
    page.keyboard.press("Control+b")
    page.wait_for_function("() => window.steerflow.getDocument().prompt['2'].mode !== undefined",
                           timeout=5_000)


def test_ctrl_z_on_a_combo_undoes_the_graph_edit_not_a_field_typed_before(page, server):
    """The drill: Ctrl+Z with a select focused ran the browser's page-wide text undo (it
    un-typed another field and recorded that as a new edit); a click on the empty canvas
    kept the focus in the field being typed."""
    c = Canvas(page)
    c.open_file("keys.json", GRAPH)
    expect(c.nodes()).to_have_count(3)
    page.wait_for_timeout(400)  # the opening is its own undo step (edits within 200 ms merge)
    b = c.widget("2", "b")
    b.click()
    page.keyboard.press("Control+a")
    page.keyboard.type("7")
    box = c.pane_box()
    page.mouse.click(box["x"] + box["width"] - 30, box["y"] + 30)  # empty canvas
    assert page.evaluate("() => document.activeElement.tagName") == "BODY"
    page.wait_for_timeout(400)  # the typed value is its own undo step
    op = c.widget("2", "op")
    before = c.document()["prompt"]["2"]["inputs"]["op"]
    op.focus()
    page.keyboard.press("ArrowDown")
    page.wait_for_timeout(400)
    assert c.document()["prompt"]["2"]["inputs"]["op"] != before
    page.keyboard.press("Control+z")
    page.wait_for_timeout(400)
    inputs = c.document()["prompt"]["2"]["inputs"]
    assert (inputs["op"], inputs["b"]) == (before, 7)
    page.keyboard.press("Control+z")  # then the typed value, and Redo puts it back
    page.wait_for_timeout(400)
    assert c.document()["prompt"]["2"]["inputs"]["b"] == 4
    page.keyboard.press("Control+y")
    page.wait_for_timeout(400)
    assert c.document()["prompt"]["2"]["inputs"]["b"] == 7


def test_a_delete_right_after_an_edit_is_its_own_undo_step(page, server):
    """The walk's drill: a value typed, then a node deleted within the 200 ms the edits
    take to settle: one Ctrl+Z undid both (the node came back with the old value)."""
    c = Canvas(page)
    c.open_file("keys.json", GRAPH)
    expect(c.nodes()).to_have_count(3)
    page.wait_for_timeout(400)  # the opening is its own undo step
    b = c.widget("2", "b")
    b.click()
    page.keyboard.press("Control+a")
    page.keyboard.type("7")
    page.keyboard.press("Enter")
    box = c.pane_box()
    page.mouse.click(box["x"] + box["width"] - 30, box["y"] + 30)  # empty canvas
    c.node("3").locator(".sf-header").click()
    page.keyboard.press("Delete")  # no wait: the edit has not settled yet
    expect(c.nodes()).to_have_count(2)
    page.wait_for_timeout(400)
    page.keyboard.press("Control+z")  # the deletion alone
    expect(c.nodes()).to_have_count(3)
    page.wait_for_timeout(400)
    assert c.document()["prompt"]["2"]["inputs"]["b"] == 7
    page.keyboard.press("Control+z")  # then the typed value
    page.wait_for_timeout(400)
    assert c.document()["prompt"]["2"]["inputs"]["b"] == 4
    expect(c.nodes()).to_have_count(3)


def test_an_edit_that_grows_a_node_over_another_is_its_own_undo_step(page, server):
    """A choice that brings its own inputs (Resize Image/Mask's resize_type) makes the node
    taller and the node below it moves down: that move amends the edit's step, and the edit
    must not be folded into the step before it (one Ctrl+Z took back the choice and the
    value set before it)."""
    doc = {"format": "steerflow.workflow", "version": 1, "extra": {}, "prompt": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64,
                                                      "batch_size": 1, "color": 0}},
        "3": {"class_type": "ResizeImageMaskNode", "inputs": {
            "input": ["1", 0], "resize_type": "scale by multiplier",
            "resize_type.multiplier": 1.0, "scale_method": "area"}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        "5": {"class_type": "PrimitiveInt", "inputs": {"value": 5}},
    }, "layout": {"nodes": {"1": {"pos": [0, 0]}, "3": {"pos": [340, 0]},
                            "4": {"pos": [340, 200]}, "5": {"pos": [700, 0]}}}}
    c = Canvas(page)
    c.open_file("grow_undo.json", doc)
    expect(c.nodes()).to_have_count(4)
    c.wait_saved(4, "grow_undo")
    page.wait_for_timeout(400)  # the opening is its own undo step
    c.set_value("5", "value", "9")
    page.wait_for_timeout(400)  # so is the value
    below = c.settled_box(c.node("4"))
    c.widget("3", "resize_type").select_option("scale dimensions")  # + width, height, crop
    expect(c.widget("3", "resize_type.crop")).to_have_count(1)
    page.wait_for_function(
        """y => { const r = document.querySelector('.react-flow__node[data-id="4"]')
                  .getBoundingClientRect(); return r.y > y + 10; }""", arg=below["y"])
    page.wait_for_timeout(400)
    page.locator(".react-flow__pane").click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+z")
    expect(c.widget("3", "resize_type")).to_have_value("scale by multiplier")
    expect(c.widget("5", "value")).to_have_value("9")
    page.keyboard.press("Control+z")
    expect(c.widget("5", "value")).to_have_value("5")


def test_undo_and_redo_buttons_are_enabled_only_with_a_step_to_take(page, server):
    """The first-time walk: after a reload Undo and Redo looked clickable and did nothing."""
    c = Canvas(page)
    c.open_file("undo_buttons.json", GRAPH)
    expect(c.nodes()).to_have_count(3)
    c.wait_saved(3, "undo_buttons")
    page.reload()
    expect(c.nodes()).to_have_count(3)
    bar = page.locator(".sf-toolbar")
    undo = bar.get_by_role("button", name="Undo", exact=True)
    redo = bar.get_by_role("button", name="Redo", exact=True)
    expect(undo).to_be_disabled()  # the restored graph is where the history starts
    expect(redo).to_be_disabled()
    c.set_value("2", "b", "7")
    expect(undo).to_be_enabled()
    expect(redo).to_be_disabled()
    undo.click()
    expect(c.widget("2", "b")).to_have_value("4")
    expect(undo).to_be_disabled()
    expect(redo).to_be_enabled()
    redo.click()
    expect(c.widget("2", "b")).to_have_value("7")
    expect(redo).to_be_disabled()


def test_a_run_that_fails_says_so_in_a_toast_that_shows_the_node(page, server):
    """The first-time walk: a run-time error was only at the foot of its node (off screen)
    and in the status bar, while a rejected prompt gets a toast with "Show"."""
    graph = {**GRAPH, "2": {"class_type": "IntMath",
                            "inputs": {"a": ["1", 0], "b": 0, "op": "floor_divide"}}}
    c = Canvas(page)
    c.open_file("fails.json", graph)
    expect(c.nodes()).to_have_count(3)
    page.evaluate("() => window.steerflow.setViewport({x: -5000, y: -5000, zoom: 1})")
    c.queue()
    toast = c.toasts().filter(has_text="Run failed")
    expect(toast).to_contain_text("#2")
    expect(toast).to_contain_text("floor_divide by zero")
    toast.get_by_role("button", name="Show").click()
    expect(c.node("2")).to_be_in_viewport()
    expect(c.node("2")).to_have_class(SELECTED)


def test_a_seed_typed_then_queued_from_the_field_shows_the_next_one(page, server):
    """Type a seed, Ctrl+Enter without leaving the field: control after generate moved the
    value, but the field kept showing the typed seed and, left, wrote it back (the veteran's
    walk: 100, 101, then 100 again, a cached run)."""
    from tests.e2e.test_canvas import small_txt2img

    c = Canvas(page)
    c.open_file("seed.json", small_txt2img())
    page.get_by_label("seed control after generate").select_option("increment")
    field = c.widget("3", "seed")
    field.click()
    page.keyboard.press("Control+a")
    page.keyboard.type("100")

    def queued_seed() -> int:
        with page.expect_request(lambda r: r.method == "POST"
                                 and r.url.split("?")[0].endswith("/prompt")) as request:
            c.queue()
        return request.value.post_data_json["prompt"]["3"]["inputs"]["seed"]

    assert queued_seed() == 100
    expect(field).to_be_focused()
    expect(field).to_have_value("101")  # what runs next, shown while it has the focus
    field.blur()  # leaving it writes nothing back
    expect(field).to_have_value("101")
    assert queued_seed() == 101
