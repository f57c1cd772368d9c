"""A first hour on the canvas, fixed: a prompt's run is drawn only on the graph that queued
it (node ids repeat across graphs), a whole example card opens it, Ctrl+Enter over the
Examples browser queues nothing, a link across a group's title bar leaves it its clicks, and
Delete removes a group selected by its title."""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator

from playwright.sync_api import expect

from tests.e2e.canvas import Canvas
from tests.e2e.conftest import LiveServer
from tests.e2e.test_canvas import TXT2IMG, small_txt2img
from tests.e2e.test_canvas_opening import _fake_prompts

SAVE = "9"  # Save Image in workflows/txt2img.json
ANOTHER = re.compile("a prompt not queued from this graph")


def _with_text(doc: dict, text: str) -> dict:
    doc = copy.deepcopy(doc)
    doc["prompt"]["6"]["inputs"]["text"] = text
    return doc


def _sampler_runs(c: Canvas, timeout: float) -> None:
    expect(c.node("3").locator(".sf-node")).to_have_attribute("data-status", "executing",
                                                                timeout=timeout)


@contextlib.contextmanager
def _long_run_with_a_short_one_behind(page, c: Canvas, server: LiveServer) -> Iterator[str]:
    """Queue the open graph (a 5000-step run that lasts whatever the test needs), then, once
    it samples, the same graph at 2 steps behind it; yields the short one's id and
    interrupts the long one after the block."""
    # the ids from the server's answers to the canvas (the first of /queue may be another's)
    prompt_id = c.queue_id()
    try:
        _sampler_runs(c, 60_000)
        c.set_value("3", "steps", "2")
        short_id = c.queue_id()
        assert short_id in {i[1] for i in server.get("/queue")["queue_pending"]}
        yield short_id
    finally:
        server.post("/interrupt", {"prompt_id": prompt_id})


def _groups_saved(page, n: int) -> None:
    page.wait_for_function("""n => JSON.parse(localStorage.getItem('steerflow.autosave'))
        .layout.groups.length === n""", arg=n)


def _drawn(c: Canvas) -> dict[str, str]:
    """The canvas nodes that show a run state, by id."""
    return c.page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.sf-node')]
        .filter(n => n.dataset.status).map(n => [n.dataset.nodeId, n.dataset.status]))""")


def test_a_prompt_is_drawn_on_its_graph_not_on_one_opened_while_it_runs(page, server: LiveServer):
    c = Canvas(page)
    # a run that lasts whatever this test needs (it is interrupted), and a short one queued
    # from the same graph behind it, whose picture comes while the other graph is open
    c.open_file("long.json", _with_text(small_txt2img(steps=5000), "walk4: a red circle"))
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    with _long_run_with_a_short_one_behind(page, c, server) as short_id:
        # another graph with the same node ids, opened while it runs: it never ran
        c.open_file("other.json", _with_text(small_txt2img(steps=2), "walk4: a blue square"))
        expect(c.widget("6", "text")).to_have_value("walk4: a blue square")
        running = page.get_by_role("list", name="queue").locator(".sf-queue-item.running")
        # the queue panel and the status bar still follow it, the nodes do not
        expect(running.get_by_test_id("queue-progress")).to_contain_text(
            re.compile(r"Sample #3 .*step \d+/5000"))
        expect(page.get_by_test_id("status")).to_contain_text(ANOTHER)
        page.wait_for_timeout(800)
        assert _drawn(c) == {}
        expect(c.node("3").locator("img.sf-preview")).to_have_count(0)
    entry = server.wait_history(short_id)
    made = entry["outputs"][SAVE]["images"][0]["filename"]
    # its picture goes to Last result and History, not onto this graph's Save Image
    made_src = re.compile(re.escape(made))
    expect(page.locator(".sf-latest img").first).to_have_attribute("src", made_src)
    page.wait_for_timeout(500)
    expect(c.node(SAVE).locator("img.sf-output-image")).to_have_count(0)
    assert _drawn(c) == {}

    # this graph's own prompt is drawn on it
    c.queue()
    expect(c.node(SAVE).locator("img.sf-output-image")).to_be_visible(timeout=120_000)
    expect(c.node(SAVE).locator(".sf-node")).to_have_attribute("data-status", "done")
    expect(c.node(SAVE).locator("img.sf-output-image")).not_to_have_attribute("src", made_src)


def test_a_reloaded_tab_goes_on_drawing_its_graphs_running_prompt(page, server: LiveServer):
    c = Canvas(page)
    # a run that lasts whatever this test needs (it is interrupted), and a short one queued
    # from the same graph behind it, whose picture the reloaded tab must put on its graph
    doc = _with_text(small_txt2img(steps=5000), "walk4: reload mid-run")
    c.open_file("reload.json", doc)
    c.wait_saved(len(doc["prompt"]), "reload")
    with _long_run_with_a_short_one_behind(page, c, server) as short_id:
        page.reload()
        page.wait_for_selector(".sf-dot.on")
        # the same graph (this tab's): its running prompt is still drawn on it
        _sampler_runs(c, 30_000)
        expect(page.get_by_test_id("status")).not_to_contain_text(ANOTHER)
    # and its queued prompt's result is put there
    made = server.wait_history(short_id)["outputs"][SAVE]["images"][0]["filename"]
    expect(c.node(SAVE).locator("img.sf-output-image")).to_have_attribute(
        "src", re.compile(re.escape(made)), timeout=30_000)


def test_a_click_anywhere_on_an_example_card_opens_it(page):
    c = Canvas(page)
    page.get_by_role("button", name="Examples", exact=True).click()
    browser = page.get_by_role("dialog", name="Examples")
    card = browser.locator('.sf-example-card[data-example="txt2img.json"]')
    # one button per card, named by its title and described by what it says
    expect(card.get_by_role("button")).to_have_count(1)
    expect(card.get_by_role("button")).to_have_accessible_description(re.compile(r"\w"))
    card.locator(".sf-example-description").click()
    expect(browser).to_be_hidden()
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    c.clear()
    page.get_by_role("button", name="Examples", exact=True).click()
    browser.locator('.sf-example-card[data-example="txt2img.json"] .sf-example-title').click()
    expect(browser).to_be_hidden()
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))


def test_ctrl_enter_over_the_examples_browser_queues_nothing(page):
    c = Canvas(page)
    c.open_file("hidden.json", small_txt2img())
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    sent = _fake_prompts(page)
    page.get_by_role("button", name="Examples", exact=True).click()
    browser = page.get_by_role("dialog", name="Examples")
    expect(browser.locator(".sf-example-card").first).to_be_visible()
    page.keyboard.press("Control+Enter")
    page.keyboard.press("Control+Shift+Enter")
    expect(c.toasts().filter(has_text="Not queued").first).to_contain_text("Examples")
    expect(browser).to_be_visible()
    page.wait_for_timeout(500)
    assert sent == []
    page.keyboard.press("Escape")
    expect(browser).to_be_hidden()
    c.queue()  # the dialog closed: the graph queues again
    expect(c.toasts().filter(has_text="Queued prompt")).to_be_visible()
    assert len(sent) == 1


def _grouped_prompts(page, c: Canvas):
    """The default graph with its two prompt nodes grouped (Ctrl+G); the group."""
    c.open_example("txt2img.json")
    c.node("6").locator(".sf-header").click()
    c.node("7").locator(".sf-header").click(modifiers=["Shift"])
    page.keyboard.press("Control+g")
    group = page.get_by_role("group", name="Group")
    expect(group).to_be_visible()
    return group


def _group_with_a_link_across_its_title(page, c: Canvas):
    """The default graph's two prompts grouped, the group moved so that links cross its title."""
    group = _grouped_prompts(page, c)
    page.mouse.click(5, c.pane_box()["y"] + c.pane_box()["height"] - 5)  # unselect the nodes
    title = group.locator(".sf-group-title")
    box = title.bounding_box()
    sampler = c.node("3").bounding_box()
    # to just left of the sampler, its title bar level with the sampler's inputs: the links
    # from the prompts and the latent cross it
    dx = sampler["x"] - 40 - (box["x"] + box["width"])
    dy = c.in_handle("3", "positive").bounding_box()["y"] - box["y"] - 10
    page.mouse.move(box["x"] + 20, box["y"] + 10)
    page.mouse.down()
    page.mouse.move(box["x"] + 20 + dx, box["y"] + 10 + dy, steps=8)
    page.mouse.up()
    return group, title


def test_a_link_across_a_group_title_leaves_the_title_its_clicks(page):
    c = Canvas(page)
    _, title = _group_with_a_link_across_its_title(page, c)
    box = title.bounding_box()
    # points of the title bar where a link is drawn (a link's hit path is under the point):
    # there the title is on top, not the link (a node may lie over the bar: it is above both)
    points = page.evaluate("""b => { const out = [];
        for (let x = b.x + 3; x < b.x + b.width - 3; x += 4) {
            for (const y of [b.y + 4, b.y + b.height / 2, b.y + b.height - 4]) {
                const under = document.elementsFromPoint(x, y);
                if (!under.some(e => e.closest('.react-flow__edge'))) continue;
                const top = under[0];
                out.push(top.closest('.sf-group-title') ? 'title'
                    : top.closest('.react-flow__node') ? 'node' : top.getAttribute('class'));
            } }
        return out; }""", box)
    assert "title" in points, points
    assert set(points) <= {"title", "node"}, points
    title.click(button="right")
    menu = page.get_by_role("menu")
    expect(menu.get_by_role("menuitem", name="Remove group", exact=True)).to_be_visible()
    page.keyboard.press("Escape")
    title.locator("span").dblclick()
    field = page.get_by_label("group title")
    field.fill("Prompts")
    field.press("Enter")
    expect(page.get_by_role("group", name="Prompts")).to_be_visible()


def test_delete_removes_a_group_selected_by_its_title_and_undo_brings_it_back(page):
    c = Canvas(page)
    group = _grouped_prompts(page, c)
    _groups_saved(page, 1)
    group.locator(".sf-group-title").click()
    expect(group).to_have_class(re.compile(r"\bselected\b"))
    # the nodes selected before are not any more: Delete takes the group alone
    expect(c.nodes().and_(page.locator(".selected"))).to_have_count(0)
    page.keyboard.press("Delete")
    expect(page.locator(".sf-group")).to_have_count(0)
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    _groups_saved(page, 0)
    page.keyboard.press("Control+z")
    expect(page.get_by_role("group", name="Group")).to_be_visible()
    # a click elsewhere unselects it: Delete then leaves it
    page.get_by_role("group", name="Group").locator(".sf-group-title").click()
    page.mouse.click(5, c.pane_box()["y"] + c.pane_box()["height"] - 5)
    expect(page.get_by_role("group", name="Group")).not_to_have_class(re.compile(r"\bselected\b"))
    page.keyboard.press("Backspace")
    expect(page.locator(".sf-group")).to_have_count(1)
