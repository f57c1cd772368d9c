"""Reroutes and notes: canvas-only nodes, saved in the document's layout, never run."""

from __future__ import annotations

import copy
import re

from playwright.sync_api import expect

from tests.comfy_fixtures import comfy_default
from tests.e2e.canvas import Canvas
from tests.e2e.test_canvas_menus import INT_CHAIN


def _edge_middle(page, edge_id: str) -> dict[str, float]:
    """The screen point halfway along an edge, once the view has settled (a file opens with
    an animated fit; on a loaded machine a point read mid-animation misses the edge)."""
    path = page.locator(f'.react-flow__edge[data-id="{edge_id}"] path').first
    read = ("p => { const l = p.getTotalLength();"
            " const pt = p.getPointAtLength(l / 2); const m = p.getScreenCTM();"
            " return {x: pt.x * m.a + m.e, y: pt.y * m.d + m.f}; }")
    last = path.evaluate(read)
    for _ in range(100):
        page.wait_for_timeout(100)
        now = path.evaluate(read)
        if abs(now["x"] - last["x"]) < 0.5 and abs(now["y"] - last["y"]) < 0.5:
            return now
        last = now
    return last


def _wait_autosaved(page, condition: str) -> None:
    """Wait until the autosaved document ``d`` meets a JavaScript ``condition``."""
    page.wait_for_function(
        "() => { const d = JSON.parse(localStorage.getItem('steerflow.autosave') || '{}');"
        f" return !!d.layout && !!({condition}); }}")


def _queued_prompt(page, c: Canvas) -> dict:
    """Queue the graph and return the prompt the canvas sent."""
    with page.expect_request(lambda r: r.url.endswith("/prompt") and r.method == "POST") as req:
        c.queue()
    return req.value.post_data_json["prompt"]


def test_a_reroute_on_a_link_keeps_the_run_and_survives_a_reload(page):
    c = Canvas(page)
    c.open_file("chain.json", INT_CHAIN)
    expect(c.edges()).to_have_count(2)
    mid = _edge_middle(page, "1:0->2:a")
    page.mouse.click(mid["x"], mid["y"], button="right")
    menu = page.get_by_role("menu", name="edge menu")
    menu.get_by_role("menuitem", name="Insert reroute").click()
    expect(c.nodes()).to_have_count(4)
    reroute = page.locator('.sf-reroute')
    expect(reroute).to_have_count(1)
    expect(reroute).to_have_attribute("data-type", "INT")  # its source's type
    expect(c.edges()).to_have_count(3)

    doc = c.document()
    (rid,) = doc["layout"]["reroutes"]
    assert doc["layout"]["reroutes"][rid]["input"] == ["1", 0]
    assert doc["layout"]["nodes"]["2"]["via"] == {"a": rid}
    assert sorted(doc["prompt"]) == ["1", "2", "3"]  # the reroute never reaches the executor
    assert doc["prompt"]["2"]["inputs"]["a"] == ["1", 0]

    sent = _queued_prompt(page, c)
    assert sorted(sent) == ["1", "2", "3"] and sent["2"]["inputs"]["a"] == ["1", 0]
    expect(c.node("3").locator(".sf-text")).to_have_text("9", timeout=60_000)

    # the autosave (written a moment after each edit) keeps it: after a reload the link
    # still runs through the reroute
    _wait_autosaved(page, f"d.layout.reroutes && d.layout.reroutes['{rid}']")
    page.reload()
    page.wait_for_selector(".sf-reroute")
    expect(c.nodes()).to_have_count(4)
    expect(page.locator(f'.react-flow__edge[data-id="1:0->{rid}:input"]')).to_have_count(1)
    expect(page.locator(f'.react-flow__edge[data-id="{rid}:0->2:a"]')).to_have_count(1)


def test_a_note_is_saved_restored_and_never_sent(page):
    c = Canvas(page)
    c.open_file("chain.json", INT_CHAIN)
    expect(c.nodes()).to_have_count(3)
    box = c.pane_box()
    page.mouse.click(box["x"] + 200, box["y"] + box["height"] - 260, button="right")
    page.get_by_role("menu", name="pane menu").get_by_role("menuitem", name="Add note").click()
    note = page.get_by_label("note text")
    expect(note).to_have_count(1)
    note.fill("Int Math adds 4: expect 9")
    _wait_autosaved(page, "Object.values(d.layout.notes || {})"
                          ".some(n => n.text === 'Int Math adds 4: expect 9')")
    doc = c.document()
    assert sorted(doc["prompt"]) == ["1", "2", "3"]
    assert [n["text"] for n in doc["layout"]["notes"].values()] == ["Int Math adds 4: expect 9"]

    page.reload()
    expect(page.get_by_label("note text")).to_have_value("Int Math adds 4: expect 9")
    sent = _queued_prompt(page, c)
    assert sorted(sent) == ["1", "2", "3"]
    assert all(n["class_type"] != "Note" for n in sent.values())
    expect(c.node("3").locator(".sf-text")).to_have_text("9", timeout=60_000)


def test_comfyui_notes_are_imported(page):
    c = Canvas(page)
    wf = copy.deepcopy(comfy_default())
    wf["nodes"].append({"id": 13, "type": "MarkdownNote", "pos": [0, 700], "size": [300, 90],
                        "mode": 0, "widgets_values": ["Markdown **note**"]})
    c.open_file("comfy.json", wf)
    notes = page.get_by_label("note text")
    expect(notes).to_have_count(2)
    expect(c.node("12").get_by_label("note text")).to_have_value("hello")
    expect(c.node("13").get_by_label("note text")).to_have_value("Markdown **note**")
    assert sorted(c.document()["layout"]["notes"]) == ["12", "13"]


REROUTED = {  # Int -> reroute 3 -> Int Math.a, and an Empty Latent Image
    "format": "steerflow.workflow", "version": 1,
    "prompt": {
        "1": {"class_type": "PrimitiveInt", "inputs": {"value": 5}},
        "2": {"class_type": "IntMath", "inputs": {"a": ["1", 0], "b": 4, "op": "add"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64,
                                                           "batch_size": 1}},
    },
    "layout": {"nodes": {"1": {"pos": [0, 0]}, "2": {"pos": [500, 0], "via": {"a": "3"}},
                         "4": {"pos": [0, 300]}},
               "reroutes": {"3": {"pos": [330, 60], "input": ["1", 0]}}, "groups": []},
    "extra": {},
}


def test_a_saved_reroute_opens_and_refuses_a_link_of_another_type(page):
    c = Canvas(page)
    c.open_file("rerouted.json", REROUTED)
    expect(c.nodes()).to_have_count(4)
    expect(page.locator('.react-flow__edge[data-id="3:0->2:a"]')).to_have_count(1)
    expect(page.locator(".sf-reroute")).to_have_attribute("data-type", "INT")
    # a LATENT into the reroute that feeds Int Math's INT input: refused, with the reason
    c.drag(c.out_handle("4", 0), c.in_handle("3", "input"))
    expect(c.toasts().filter(has_text="Link refused")).to_contain_text("type mismatch")
    expect(c.edges()).to_have_count(2)
    assert c.document()["layout"]["reroutes"]["3"]["input"] == ["1", 0]


def test_reroute_and_note_are_in_the_search_and_a_dropped_link_can_end_on_a_reroute(page):
    c = Canvas(page)
    note = c.add_node("note", 80, 300)
    expect(c.node(note)).to_have_class(re.compile(r"\bsf-note\b|react-flow__node-note"))
    c.open_file("chain.json", INT_CHAIN)
    expect(c.edges()).to_have_count(2)
    # drag from Int Math's output onto empty canvas: a reroute is offered, and takes the link
    handle = c.settled_box(c.out_handle("2", 0))
    box = c.pane_box()
    page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + 200, box["y"] + box["height"] - 80, steps=10)  # clear of the minimap
    page.mouse.up()
    dialog = page.get_by_role("dialog", name="Add node")
    expect(dialog).to_contain_text("type INT")
    names = dialog.locator(".sf-palette-item").evaluate_all("els => els.map(e => e.dataset.type)")
    assert "Reroute" in names and "Note" not in names
    dialog.get_by_label("Search nodes").fill("reroute")
    page.keyboard.press("Enter")
    reroute = page.locator(".sf-reroute")
    expect(reroute).to_have_count(1)
    expect(reroute).to_have_attribute("data-type", "INT")
    rid = reroute.evaluate("e => e.closest('.react-flow__node').dataset.id")
    expect(page.locator(f'.react-flow__edge[data-id="2:0->{rid}:input"]')).to_have_count(1)
    assert sorted(c.document()["layout"]["reroutes"]) == [rid]
