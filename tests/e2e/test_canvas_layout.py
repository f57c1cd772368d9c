"""Layout on the canvas: examples and ComfyUI files open readable and without overlaps, a
node that grows makes room below it; minimap, resize, collapse."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from tests.e2e.canvas import NOT_WHOLLY_IN_VIEW as CUT
from tests.e2e.canvas import Canvas
from tests.e2e.conftest import LiveServer
from tests.e2e.test_canvas import small_txt2img

READABLE_ZOOM = 0.8  # web/src/lib/layout.ts
WHOLE_VIEW_ZOOM = 0.2  # web/src/lib/layout.ts

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


# A view no fit makes (the graph far off screen): the example's fit, which runs once
# its nodes are measured, is seen as the view moving away from it.
UNFITTED = {"x": 54321.5, "y": 54321.5, "zoom": 1}


def _open_example(page, name: str, n_nodes: int) -> None:
    # set until it holds: whatever the last example's opening still had under way lands first
    page.wait_for_function("""vp => {
        if (window.steerflow.getViewport().x === vp.x) return true;
        window.steerflow.setViewport(vp);
        return false;
    }""", arg=UNFITTED)
    Canvas(page).open_example(name)
    page.wait_for_function("n => document.querySelectorAll('.react-flow__node').length === n",
                           arg=n_nodes)
    # the fit has run, and the frame after it is drawn
    page.wait_for_function("vp => window.steerflow.getViewport().x !== vp.x", arg=UNFITTED)
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


@pytest.mark.slow
def test_every_example_opens_whole_without_overlaps(browser_context, server: LiveServer):
    page = browser_context.new_page()
    # a small desktop window (the second walk: at 1024x768, down to zoom 0.4, 25 of the 37
    # examples were cut on both sides, their Save Image off screen)
    page.set_viewport_size({"width": 1024, "height": 768})
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
        # an example opens whole (its Save Image in view: the first-time walk), at the
        # readable zoom where it fits there, else as far out as it needs
        with contextlib.suppress(PlaywrightTimeout):
            page.wait_for_function(f"() => ({CUT})().length === 0", timeout=5_000)
        if cut := page.evaluate(CUT):
            problems.append(f"{name}: nodes {', '.join(cut)} not wholly in view")
        if zoom < WHOLE_VIEW_ZOOM - 1e-6:
            problems.append(f"{name}: zoom {zoom:.2f}")
        if page.locator(".sf-canvas.sf-lod").count():
            problems.append(f"{name}: low detail")
        # a widget is painted, and readable where the graph fits at the readable zoom: its
        # text is at least 10 px on screen
        widget = page.locator(".sf-input input, .sf-input textarea, .sf-input select").first
        expect(widget).to_be_visible()
        px = widget.evaluate("e => parseFloat(getComputedStyle(e).fontSize)") * zoom
        if zoom >= READABLE_ZOOM - 1e-6 and px < 10:
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


# --- ComfyUI files (the comfyui_workflow_templates package ComfyUI ships its templates in) ---
TEMPLATES = ("image2image.json", "default.json", "hiresfix_latent_workflow.json")

# nodes and groups on screen: no two nodes overlap, a node overlapping a group lies inside it,
# and groups that overlap are nested; plus the zoom
LAYOUT_PROBLEMS = """() => {
    const box = e => {
        const r = e.getBoundingClientRect();
        return {x: r.x, y: r.y, w: r.width, h: r.height};
    };
    const hit = (a, b) => a.x + a.w - 1 > b.x && b.x + b.w - 1 > a.x
        && a.y + a.h - 1 > b.y && b.y + b.h - 1 > a.y;
    const holds = (o, i) => o.x <= i.x + 1 && o.y <= i.y + 1
        && o.x + o.w >= i.x + i.w - 1 && o.y + o.h >= i.y + i.h - 1;
    const nodes = [...document.querySelectorAll('.react-flow__node')]
        .map(e => ({id: e.dataset.id, ...box(e)}));
    const groups = [...document.querySelectorAll('.sf-group')]
        .map(e => ({id: e.textContent, ...box(e)}));
    const out = [];
    nodes.forEach((a, i) => nodes.slice(i + 1).forEach(b => {
        if (hit(a, b)) out.push(`nodes ${a.id}/${b.id}`);
    }));
    for (const g of groups) {
        for (const n of nodes) {
            if (hit(g, n) && !holds(g, n)) out.push(`node ${n.id} half in ${g.id}`);
        }
    }
    groups.forEach((a, i) => groups.slice(i + 1).forEach(b => {
        if (hit(a, b) && !holds(a, b) && !holds(b, a)) out.push(`groups ${a.id}/${b.id}`);
    }));
    const zoom = window.steerflow.getViewport().zoom;
    if (zoom < 0.8 - 1e-6) out.push(`zoom ${zoom.toFixed(2)}`);
    return out;
}"""


def _comfy_templates() -> Path:
    templates = pytest.importorskip("comfyui_workflow_templates",
                                    reason="ComfyUI's workflow templates are not installed")
    folder = Path(templates.__file__).parent / "templates"
    if not all((folder / name).is_file() for name in TEMPLATES):
        pytest.skip(f"the templates {TEMPLATES} are not in {folder}")
    return folder


def test_comfyui_templates_open_readable_without_overlaps(page):
    """ComfyUI stores its nodes' sizes and its last view (image2image.json: zoom 0.43); ours
    are taller. Opened, the nodes are moved apart down their columns, groups grow around
    theirs, and the view is fitted at the README's readable zoom (>= 0.8 up to 40 nodes)."""
    folder = _comfy_templates()
    c = Canvas(page)
    for name in TEMPLATES:
        workflow = json.loads((folder / name).read_text())
        assert len(workflow["nodes"]) <= 40
        c.open_file(name, workflow)
        expect(c.toasts().filter(has_text=f"Opened {name}")).to_be_visible()
        # the nodes are arranged once measured, then the view is fitted
        with contextlib.suppress(PlaywrightTimeout):
            page.wait_for_function(f"() => ({LAYOUT_PROBLEMS})().length === 0", timeout=10_000)
        problems = page.evaluate(LAYOUT_PROBLEMS)
        assert not problems, f"{name}: {problems}"
        if name == "image2image.json":
            # the notes sit where the file put them, beside the nodes they explain
            assert c.nodes().count() == 12
            expect(c.node("17")).to_be_in_viewport()


def test_a_node_that_grows_makes_room_below_it(page):
    """A sampler's live preview (and its kept last preview) grows it by a square image:
    the nodes right below it move down instead of being covered; the others stay."""
    doc = small_txt2img()
    doc["prompt"]["6"]["inputs"]["text"] = "grow e2e: a blue square"  # not cached by another test
    doc["layout"]["nodes"]["8"]["pos"] = [570, 420]  # VAE Decode, just under Sample (#3)
    doc["layout"]["nodes"]["5"]["pos"] = [570, 560]  # and Empty Latent Image under that
    c = Canvas(page)
    c.open_file("grow.json", doc)
    expect(c.nodes()).to_have_count(len(doc["prompt"]))
    sampler = c.settled_box(c.node("3"))
    still = {i: c.settled_box(c.node(i)) for i in ("4", "6", "7", "9")}
    assert page.evaluate(RECTS) and not _overlaps(page.evaluate(RECTS))
    c.queue()
    expect(c.node("3").locator("img.sf-preview")).to_be_visible(timeout=120_000)
    expect(c.node("9").locator("img.sf-output-image")).to_be_visible(timeout=120_000)
    grown = c.settled_box(c.node("3"))
    assert grown["height"] > sampler["height"] + 100
    page.wait_for_function(f"() => {{ const r = ({RECTS})(); return r.length === 7; }}")
    assert not _overlaps(page.evaluate(RECTS)), page.evaluate(RECTS)
    assert c.settled_box(c.node("8"))["y"] >= grown["y"] + grown["height"]
    for i, box in still.items():  # beside it (or grown with nothing below): not moved
        now = c.settled_box(c.node(i))
        assert (now["x"], now["y"]) == (box["x"], box["y"]), i
    c.wait_saved(len(doc["prompt"]), "grow")
    page.wait_for_function("""() => JSON.parse(localStorage.getItem('steerflow.autosave'))
        .layout.nodes['8'].pos[1] > 420""")


def _in_view(page) -> int:
    return page.evaluate("""() => {
        const p = document.querySelector('.react-flow').getBoundingClientRect();
        return [...document.querySelectorAll('.react-flow__node')].filter(e => {
            const r = e.getBoundingClientRect();
            return r.right > p.left && r.bottom > p.top && r.left < p.right && r.top < p.bottom;
        }).length;
    }""")


def test_minimap_drag_pans_proportionally_and_keeps_the_graph(page):
    """A 300 px drag on the minimap sent the view to translate(4828px, 4998px), an empty
    canvas; so did grabbing a node's output dot drawn under the minimap."""
    c = Canvas(page)
    doc = small_txt2img()
    c.open_file("minimap.json", doc)
    expect(c.nodes()).to_have_count(len(doc["prompt"]))
    minimap = page.locator(".react-flow__minimap")
    box = c.settled_box(minimap)
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    vp = page.evaluate("() => window.steerflow.getViewport()")
    scale = minimap.locator("svg").evaluate("""s => Math.max(
        s.viewBox.baseVal.width / s.clientWidth, s.viewBox.baseVal.height / s.clientHeight)""")

    # a short drag: the view's rectangle follows the pointer at the minimap's scale
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 6, cy + 4, steps=3)
    page.mouse.up()
    now = page.evaluate("() => window.steerflow.getViewport()")
    assert now["x"] == pytest.approx(vp["x"] - 6 * scale * vp["zoom"], abs=1)
    assert now["y"] == pytest.approx(vp["y"] - 4 * scale * vp["zoom"], abs=1)

    # a long one, in every direction: the graph stays on the canvas
    for dx, dy in ((-300, -300), (300, 0), (0, 300), (-150, -100)):
        page.mouse.move(cx, cy)
        page.mouse.down()
        page.mouse.move(cx + dx, cy + dy, steps=12)
        page.mouse.up()
        vp = page.evaluate("() => window.steerflow.getViewport()")
        assert abs(vp["x"]) < 3000 and abs(vp["y"]) < 3000, vp
        assert _in_view(page) >= 1, (dx, dy, vp)

    # a node's output dot under the minimap: pressing there pans, never starts a link
    handle = c.out_handle("4", 0)
    h = c.settled_box(handle)
    vp = page.evaluate("() => window.steerflow.getViewport()")
    vp["x"] += cx - 40 - (h["x"] + h["width"] / 2)
    vp["y"] += cy - (h["y"] + h["height"] / 2)
    page.evaluate("vp => window.steerflow.setViewport(vp)", vp)
    h = c.settled_box(handle)
    hx, hy = h["x"] + h["width"] / 2, h["y"] + h["height"] / 2
    assert box["x"] < hx < box["x"] + box["width"] and box["y"] < hy < box["y"] + box["height"]
    edges = c.edges().count()
    page.mouse.move(hx, hy)
    page.mouse.down()
    page.mouse.move(hx - 300, hy - 200, steps=12)
    expect(page.locator(".react-flow__connectionline")).to_have_count(0)
    page.mouse.up()
    expect(page.get_by_role("dialog", name="Add node")).to_have_count(0)
    expect(c.edges()).to_have_count(edges)
    assert _in_view(page) >= 1


def test_a_new_node_keeps_clear_of_the_samplers_coming_preview(page):
    """The toolbar's Add node looked for free space among the nodes as they were: a node put
    under Sample was pushed down, out of view, by the first run's preview (a newcomer's walk)."""
    doc = small_txt2img()
    doc["prompt"]["6"]["inputs"]["text"] = "room e2e: a red star"  # not cached by another test
    c = Canvas(page)
    c.open_file("room.json", doc)
    expect(c.nodes()).to_have_count(len(doc["prompt"]))
    sampler = c.settled_box(c.node("3"))
    page.get_by_role("button", name="Add node").click()
    dialog = page.get_by_role("dialog", name="Add node")
    dialog.get_by_label("Search nodes").fill("Load LoRA")
    page.keyboard.press("Enter")
    expect(c.nodes()).to_have_count(len(doc["prompt"]) + 1)
    (lora,) = set(c.node_ids()) - set(doc["prompt"])
    placed = c.settled_box(c.node(lora))
    # not in the square below Sample that its preview will take
    s, p = sampler, placed
    assert not (p["x"] < s["x"] + s["width"] and s["x"] < p["x"] + p["width"]
                and p["y"] < s["y"] + s["height"] + s["width"]
                and s["y"] < p["y"] + p["height"]), (placed, sampler)
    c.queue()
    expect(c.node("3").locator("img.sf-preview")).to_be_visible(timeout=120_000)
    expect(c.node("9").locator("img.sf-output-image")).to_be_visible(timeout=120_000)
    assert c.settled_box(c.node("3"))["height"] > sampler["height"] + 100
    assert c.settled_box(c.node(lora)) == placed
    assert not _overlaps(page.evaluate(RECTS)), page.evaluate(RECTS)


def test_undo_past_a_runs_room_making_keeps_the_room(page):
    """Undo put back the layout from before Sample grew (the seed edit and the move it
    caused are one step), so the node below was under Sample's preview: it is moved down again."""
    doc = small_txt2img()
    doc["prompt"]["6"]["inputs"]["text"] = "undo room e2e: a green circle"  # not cached before
    doc["layout"]["nodes"]["8"]["pos"] = [570, 420]  # VAE Decode, just under Sample (#3)
    c = Canvas(page)
    c.open_file("undo-room.json", doc)
    expect(c.nodes()).to_have_count(len(doc["prompt"]))
    seed = str(doc["prompt"]["3"]["inputs"]["seed"])
    c.set_value("3", "seed", "4321")
    c.wait_saved_inputs("3", seed=4321)
    c.queue()
    expect(c.node("3").locator("img.sf-preview")).to_be_visible(timeout=120_000)
    page.wait_for_function(f"() => !({_OVERLAPPING})()")
    page.locator(".react-flow__pane").click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+z")
    expect(c.widget("3", "seed")).to_have_value(seed)
    page.wait_for_function(f"() => !({_OVERLAPPING})()")
    grown = c.settled_box(c.node("3"))
    assert c.settled_box(c.node("8"))["y"] >= grown["y"] + grown["height"]
    # and that is the restored step itself: Ctrl+Y comes back to the seed edit
    page.keyboard.press("Control+y")
    expect(c.widget("3", "seed")).to_have_value("4321")


_OVERLAPPING = f"""() => {{
    const r = ({RECTS})();
    return r.some((a, i) => r.slice(i + 1).some(b => a.x + a.w - 1 > b.x && b.x + b.w - 1 > a.x
        && a.y + a.h - 1 > b.y && b.y + b.h - 1 > a.y));
}}"""
