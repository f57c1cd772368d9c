"""Layout on the canvas: examples open readable and without overlaps; minimap, resize, collapse."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.canvas import Canvas
from tests.e2e.conftest import LiveServer

READABLE_ZOOM = 0.8  # web/src/lib/layout.ts
COLLAPSED = re.compile(r"\bsf-collapsed\b")

RECTS = """() => [...document.querySelectorAll('.react-flow__node')].map(e => {
    const r = e.getBoundingClientRect();
    return {id: e.dataset.id, x: r.x, y: r.y, w: r.width, h: r.height};
})"""


def _overlaps(rects: list[dict]) -> list[tuple[str, str]]:
    out = []
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            if (a["x"] + a["w"] - 1 > b["x"] and b["x"] + b["w"] - 1 > a["x"]
                    and a["y"] + a["h"] - 1 > b["y"] and b["y"] + b["h"] - 1 > a["y"]):
                out.append((a["id"], b["id"]))
    return out


def _open_example(page, name: str, n_nodes: int) -> None:
    Canvas(page).open_example(name)
    page.wait_for_function("n => document.querySelectorAll('.react-flow__node').length === n",
                           arg=n_nodes)
    page.wait_for_timeout(400)  # the fit runs once the nodes are measured


@pytest.mark.slow
def test_every_example_opens_readable_without_overlaps(browser_context, server: LiveServer):
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/?visibleOnly=0")  # mount every node, to measure them all
    page.wait_for_selector(".sf-dot.on")
    names = server.get("/workflows")
    assert "combined.json" in names
    problems = []
    for name in names:
        doc = server.get(f"/workflows/{name}")
        n = len(doc["prompt"])
        _open_example(page, name, n)
        zoom = page.evaluate("() => window.steerflow.getViewport().zoom")
        if zoom < READABLE_ZOOM - 1e-6:
            problems.append(f"{name}: zoom {zoom:.2f}")
        if page.locator(".sf-canvas.sf-lod").count():
            problems.append(f"{name}: low detail")
        # a widget is painted and readable: its text is at least 10 px on screen
        widget = page.locator(".sf-input input, .sf-input textarea, .sf-input select").first
        expect(widget).to_be_visible()
        px = widget.evaluate("e => parseFloat(getComputedStyle(e).fontSize)") * zoom
        if px < 10:
            problems.append(f"{name}: widget text {px:.1f} px")
        rects = page.evaluate(RECTS)
        if overlap := _overlaps(rects):
            # say how to fix it: the lower node's layout y that clears the upper one
            by_id = {r["id"]: r for r in rects}
            pos = doc["layout"]["nodes"]
            hints = []
            for x, y in overlap:
                top, low = sorted((x, y), key=lambda i: by_id[i]["y"])
                clear = pos[top]["pos"][1] + by_id[top]["h"] / zoom + 40
                hints.append(f"{top}/{low} (move {low} to y >= {clear:.0f})")
            problems.append(f"{name}: overlapping nodes {', '.join(hints)}")
    assert not problems, "\n".join(problems)
    assert not errors, errors


def test_minimap_resize_and_collapse(page):
    c = Canvas(page)
    ckpt = c.add_node("Load Checkpoint", 60, 60)
    expect(page.get_by_label("minimap").first).to_be_visible()
    expect(page.locator(".react-flow__minimap-node")).to_have_count(1)
    node = c.node(ckpt)
    node.locator(".sf-header").click()
    before = node.bounding_box()
    handle = node.locator(".react-flow__resize-control.bottom.right")
    hb = handle.bounding_box()
    page.mouse.move(hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2)
    page.mouse.down()
    page.mouse.move(hb["x"] + 120, hb["y"] + 80, steps=8)
    page.mouse.up()
    after = node.bounding_box()
    assert after["width"] > before["width"] + 60
    c.wait_saved(1)
    page.wait_for_function("""() => {
        const d = JSON.parse(localStorage.getItem('steerflow.autosave'));
        const n = Object.values(d.layout.nodes)[0]; return n.size && n.size[0] > 300; }""")
    # collapse from the node's context menu: only the header is left, and it is saved
    node.locator(".sf-header").click(button="right")
    page.get_by_role("menuitem", name="Collapse").click()
    expect(node.locator(".sf-node")).to_have_class(COLLAPSED)
    assert node.bounding_box()["height"] < 50
    page.wait_for_function("""() => Object.values(
        JSON.parse(localStorage.getItem('steerflow.autosave')).layout.nodes
    )[0].collapsed === true""")
    page.reload()
    expect(c.node(ckpt).locator(".sf-node")).to_have_class(COLLAPSED)
