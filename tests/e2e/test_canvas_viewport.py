"""The window changes size: the toolbar stays one line, and a view nobody moved is fitted again."""

from __future__ import annotations

import itertools

import pytest
from playwright.sync_api import expect

from tests.e2e.canvas import Canvas
from tests.e2e.test_canvas import TXT2IMG, small_txt2img

LONG_NAME = "a_workflow_with_a_rather_long_name_for_the_toolbar"

# every control of the toolbar, as tests and screen readers find it
CONTROLS = [
    ("button", "Queue"), ("spinbutton", "queue count"), ("checkbox", "queue on change"),
    ("button", "Run selected"), ("button", "Interrupt"), ("button", "Add node"),
    ("button", "Undo"), ("button", "Redo"), ("button", "Open"), ("button", "Save"),
    ("button", "Export"), ("button", "Export API"), ("button", "Examples"), ("button", "Clear"),
    ("button", "Refresh"), ("button", "keyboard shortcuts"),
]

# the toolbar's items in the row (not a dialog it opened), with their boxes
TOOLBAR = """() => {
    const bar = document.querySelector('.sf-toolbar');
    const inRow = e => e.getClientRects().length
        && !['fixed', 'absolute'].includes(getComputedStyle(e).position);
    const items = [...bar.children].filter(inRow)
        .map(e => { const r = e.getBoundingClientRect();
                    return {text: e.textContent, x: r.x, y: r.y, w: r.width, h: r.height,
                            cut: e.tagName === 'BUTTON' && e.scrollWidth > e.clientWidth + 1}; });
    return {scroll: bar.scrollWidth, client: bar.clientWidth, items};
}"""


def _check_one_line(page, width: int) -> None:
    bar = page.evaluate(TOOLBAR)
    items = bar["items"]
    # one line: no item starts below the bottom of another
    tops = [it["y"] for it in items]
    bottoms = [it["y"] + it["h"] for it in items]
    assert max(tops) < min(bottoms), f"the toolbar wraps at {width} px: {items}"
    assert bar["scroll"] <= bar["client"], f"the toolbar overflows at {width} px"
    # nothing off screen, cut or overlapping
    for it in items:
        name = it["text"]
        on_screen = it["x"] >= 0 and it["x"] + it["w"] <= width + 0.5
        assert on_screen, f"{name!r} is off screen at {width} px"
        assert not it["cut"], f"{name!r} is cut at {width} px"
    row = sorted(items, key=lambda it: it["x"])
    for a, b in itertools.pairwise(row):
        assert a["x"] + a["w"] <= b["x"] + 0.5, f"{a['text']!r} overlaps {b['text']!r} at {width}"


@pytest.mark.parametrize("size", [(1280, 800), (1920, 1080)])
def test_toolbar_is_one_line_with_every_control_at_desktop_widths(page, size):
    width, height = size
    c = Canvas(page)
    c.open_file(f"{LONG_NAME}.json", small_txt2img())
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    page.set_viewport_size({"width": width, "height": height})
    page.wait_for_timeout(300)
    _check_one_line(page, width)
    bar = page.locator(".sf-toolbar")
    for role, name in CONTROLS:
        expect(bar.get_by_role(role, name=name, exact=True)).to_be_visible()
    expect(bar.get_by_role("button", name="More actions")).to_have_count(0)  # nothing folded away
    # the document name gives way (cut with an ellipsis, whole in its tooltip) rather than wrapping
    doc = page.locator(".sf-docname")
    expect(doc).to_have_text(LONG_NAME)
    assert LONG_NAME in (doc.get_attribute("title") or "")
    assert doc.bounding_box()["width"] >= 60


def test_narrow_toolbar_stays_one_line_and_keeps_every_control_reachable(page):
    c = Canvas(page)
    c.open_file(f"{LONG_NAME}.json", small_txt2img())
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    page.set_viewport_size({"width": 1024, "height": 768})
    page.wait_for_timeout(300)
    _check_one_line(page, 1024)
    bar = page.locator(".sf-toolbar")
    more = bar.get_by_role("button", name="More actions")
    expect(more).to_be_visible()  # the row is too narrow for every button at 1024 px
    inline = {(role, name) for role, name in CONTROLS
              if bar.get_by_role(role, name=name, exact=True).is_visible()}
    folded = [name for role, name in CONTROLS if (role, name) not in inline]
    assert folded, "nothing moved into the More menu"
    more.click()
    menu = page.get_by_role("menu", name="More actions")
    expect(menu).to_be_visible()
    box = menu.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 1024, f"the menu is off screen: {box}"
    for name in folded:
        expect(menu.get_by_role("menuitem", name=name, exact=True)).to_be_visible()
    page.keyboard.press("Escape")
    expect(menu).to_be_hidden()
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))  # Escape closed only the menu
    # an action from the menu works like its button
    name = "Clear" if "Clear" in folded else folded[0]
    more.click()
    menu.get_by_role("menuitem", name=name, exact=True).click()
    expect(menu).to_be_hidden()
    if name == "Clear":
        c.confirm_clear()
        expect(c.nodes()).to_have_count(0)
    # wide again: every button is back in the row
    page.set_viewport_size({"width": 1920, "height": 1080})
    for role, control in CONTROLS:
        expect(bar.get_by_role(role, name=control, exact=True)).to_be_visible()
    expect(more).to_have_count(0)


# how far the graph's centre is from the canvas's (px), and whether every node is in view
FIT = """() => {
    const pane = document.querySelector('.react-flow').getBoundingClientRect();
    const rs = [...document.querySelectorAll('.react-flow__node')]
        .map(e => e.getBoundingClientRect());
    const left = Math.min(...rs.map(r => r.left)), right = Math.max(...rs.map(r => r.right));
    const top = Math.min(...rs.map(r => r.top)), bottom = Math.max(...rs.map(r => r.bottom));
    return {dx: (left + right) / 2 - (pane.left + pane.right) / 2,
            dy: (top + bottom) / 2 - (pane.top + pane.bottom) / 2,
            inside: left >= pane.left && right <= pane.right
                    && top >= pane.top && bottom <= pane.bottom};
}"""
FITTED = f"""() => {{ const f = ({FIT})();
    return f.inside && Math.abs(f.dx) < 3 && Math.abs(f.dy) < 3; }}"""


def _open_fitted(page) -> Canvas:
    """Open the txt2img graph (it fits whole, centred, at 1280x800 and up) and wait for its fit."""
    c = Canvas(page)
    c.open_file("refit.json", small_txt2img())
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    page.wait_for_function(FITTED, timeout=5_000)
    return c


def _viewport(page) -> dict[str, float]:
    return page.evaluate("() => window.steerflow.getViewport()")


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(abs(a[k] - b[k]) < 0.5 for k in ("x", "y")) and abs(a["zoom"] - b["zoom"]) < 1e-4


def test_a_window_resize_refits_a_view_nobody_moved(page):
    _open_fitted(page)
    before = _viewport(page)
    page.set_viewport_size({"width": 1280, "height": 800})
    page.wait_for_function(FITTED, timeout=5_000)
    assert not _same(_viewport(page), before)
    page.set_viewport_size({"width": 1920, "height": 1080})
    page.wait_for_function(FITTED, timeout=5_000)


def test_a_window_resize_keeps_a_view_the_user_moved(page):
    c = _open_fitted(page)
    # pan by dragging the empty canvas (its top-left corner: the graph is centred)
    pane = c.pane_box()
    page.mouse.move(pane["x"] + 40, pane["y"] + 40)
    page.mouse.down()
    page.mouse.move(pane["x"] + 180, pane["y"] + 110, steps=8)
    page.mouse.up()
    panned = _viewport(page)
    page.set_viewport_size({"width": 1280, "height": 800})
    page.wait_for_timeout(800)  # well past the refit's debounce
    assert _same(_viewport(page), panned), "a resize moved the view the user panned"

    # zoomed with the canvas's zoom button: kept as well
    page.locator(".react-flow__controls-zoomin").click()
    page.wait_for_timeout(300)
    zoomed = _viewport(page)
    assert not _same(zoomed, panned)
    page.set_viewport_size({"width": 1600, "height": 1000})
    page.wait_for_timeout(800)
    assert _same(_viewport(page), zoomed), "a resize moved the view the user zoomed"

    # the fit button makes it a fitted view again: the next resize refits
    page.get_by_role("button", name="Fit View").click()
    page.wait_for_timeout(300)
    page.set_viewport_size({"width": 1280, "height": 800})
    page.wait_for_function(FITTED, timeout=5_000)


def test_a_fitted_view_restored_after_a_reload_still_refits(page):
    c = _open_fitted(page)
    c.wait_saved(len(TXT2IMG["prompt"]), "refit")
    page.wait_for_function("() => localStorage.getItem('steerflow.autosave.fit') !== null")
    page.reload()
    page.wait_for_selector(".sf-dot.on")
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    page.set_viewport_size({"width": 1280, "height": 800})
    page.wait_for_function(FITTED, timeout=5_000)
