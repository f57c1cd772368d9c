"""Node help: the help panel renders a node's docstring; inputs show their tooltip on hover."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.canvas import Canvas

SEGA = {
    "format": "steerflow.workflow", "version": 1,
    "prompt": {"1": {"class_type": "SEGAConcept", "inputs": {"text": "blue"}},
               "2": {"class_type": "ApplySEGA", "inputs": {"concepts": ["1", 0]}}},
    "layout": {"nodes": {"1": {"pos": [0, 0]}, "2": {"pos": [360, 0]}}, "groups": []},
    "extra": {},
}


def test_help_shows_the_usage_advice_and_follows_the_selection(page):
    c = Canvas(page)
    c.open_file("sega.json", SEGA)
    expect(c.nodes()).to_have_count(2)
    c.node("1").get_by_role("button", name="help").click()
    help_panel = page.get_by_role("dialog", name="node help")
    expect(help_panel).to_be_visible()
    expect(help_panel.get_by_role("heading", name="SEGA Concept")).to_be_visible()
    # the docstring's advice, its list rendered as a list
    expect(help_panel).to_contain_text("describe the subject both ways")
    expect(help_panel.locator("li").first).to_be_visible()
    # inputs with their tooltips
    expect(help_panel.locator('[data-help-input="scale"]')).to_contain_text("Edit guidance scale")

    # selecting another node shows its help; the node menu opens it too
    c.node("2").locator(".sf-title").click()
    expect(help_panel).to_have_attribute("data-node-type", "ApplySEGA")
    help_panel.get_by_role("button", name="close help").click()
    expect(help_panel).to_be_hidden()
    c.node("2").locator(".sf-header").click(button="right")
    page.get_by_role("menu", name="node menu").get_by_role("menuitem", name="Help").click()
    expect(page.get_by_role("dialog", name="node help")).to_contain_text("Semantic Guidance")


def test_an_input_tooltip_appears_on_hover(page):
    c = Canvas(page)
    c.open_file("sega.json", SEGA)
    expect(c.nodes()).to_have_count(2)
    label = c.node("1").locator('.sf-input[data-input="scale"]')
    expect(label).to_have_attribute("data-tooltip", re.compile("Edit guidance scale"))
    # hover where the label rests once the view has settled, then a small move,
    # as a hand would
    box = c.settled_box(label.locator(".sf-input-label"))
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.move(x + 2, y, steps=2)
    tip = page.get_by_role("tooltip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text("Edit guidance scale")
    page.mouse.move(5, 5)
    expect(tip).to_be_hidden()


def test_nodes_are_named_by_their_titles_and_help_panels_take_the_focus(page):
    """A screen reader names each node (React Flow's focusable group had no name) and reads a
    help panel as it opens; closing it gives the focus back to what opened it."""
    c = Canvas(page)
    c.open_file("sega.json", SEGA)
    expect(c.nodes()).to_have_count(2)
    expect(page.get_by_role("group", name="SEGA Concept", exact=True)).to_have_count(1)
    expect(page.get_by_role("group", name="Apply SEGA", exact=True)).to_have_count(1)
    # the name follows a rename
    c.node("1").locator(".sf-title").dblclick()
    page.get_by_role("textbox", name="node title").fill("Make it blue")
    page.keyboard.press("Enter")
    expect(page.get_by_role("group", name="Make it blue", exact=True)).to_have_count(1)

    opener = c.node("1").get_by_role("button", name="help")
    opener.click()
    help_panel = page.get_by_role("dialog", name="node help")
    expect(help_panel).to_be_focused()
    page.keyboard.press("Escape")
    expect(help_panel).to_be_hidden()
    expect(opener).to_be_focused()

    keys_button = page.get_by_role("button", name="keyboard shortcuts")
    keys_button.click()
    keys = page.get_by_role("dialog", name="keyboard shortcuts")
    expect(keys).to_be_focused()
    page.keyboard.press("Tab")
    expect(keys.get_by_role("button", name="close shortcuts")).to_be_focused()
    page.keyboard.press("Escape")
    expect(keys).to_be_hidden()
    expect(keys_button).to_be_focused()


def test_the_side_panel_tabs_are_one_tab_stop_moved_with_the_arrows(page):
    """WAI-ARIA's tabs pattern: only the open tab is a Tab stop; the arrows (and Home, End)
    open the others; each tab names the panel it controls."""
    queue = page.get_by_role("tab", name="Queue")
    history = page.get_by_role("tab", name="History")
    gallery = page.get_by_role("tab", name="Gallery")
    expect(queue).to_have_attribute("aria-selected", "true")
    expect(queue).to_have_attribute("tabindex", "0")
    expect(history).to_have_attribute("tabindex", "-1")
    queue.focus()
    page.keyboard.press("ArrowRight")
    expect(history).to_be_focused()
    expect(history).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("tabpanel", name="History")).to_be_visible()
    page.keyboard.press("End")  # the last tab is Workflows (the library) since it came
    expect(page.get_by_role("tab", name="Workflows")).to_be_focused()
    page.keyboard.press("ArrowLeft")
    expect(gallery).to_be_focused()
    page.keyboard.press("End")
    page.keyboard.press("ArrowRight")
    expect(queue).to_be_focused()
    expect(page.get_by_role("tabpanel", name="Queue")).to_be_visible()


def test_a_toast_leaves_the_help_panel_readable_in_a_small_window(page):
    """At 800x600 a toast lay over the help panel's text (the second walk)."""
    c = Canvas(page)
    c.open_file("sega.json", SEGA)
    expect(c.nodes()).to_have_count(2)
    page.set_viewport_size({"width": 800, "height": 600})
    c.node("1").get_by_role("button", name="help").click()
    help_panel = page.get_by_role("dialog", name="node help")
    expect(help_panel).to_be_visible()
    c.queue()  # no output node: refused
    expect(page.locator(".sf-toast").first).to_be_visible()
    # (the panel follows the toasts' room a frame after they change: polled, not one snapshot)
    page.wait_for_function("""() => {
        const a = document.querySelector('.sf-help').getBoundingClientRect();
        return [...document.querySelectorAll('.sf-toast')].every(t => {
            const b = t.getBoundingClientRect();
            return a.bottom <= b.top + 0.5 || b.right <= a.left || a.right <= b.left;
        });
    }""", timeout=5_000)
