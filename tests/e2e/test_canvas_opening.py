"""Opening a workflow is atomic as the user sees it: nothing done while it loads goes to the
graph it replaces, and it is an undo step of its own at once. Also the modal dialogs' focus,
Clear's question, the first view of the default graph and where pasted / cloned nodes go."""

from __future__ import annotations

import json
from typing import Any

from playwright.sync_api import expect

from tests.e2e.canvas import Canvas
from tests.e2e.conftest import REPO, LiveServer
from tests.e2e.test_canvas import TXT2IMG, small_txt2img

# the slow network of a remote server (`steerflow serve --token`), on every request
LATENCY_MS = 400


def _fake_prompts(page) -> list[dict[str, Any]]:
    """POST /prompt answered here (not run): the bodies the canvas sent, in order."""
    sent: list[dict[str, Any]] = []

    def on_prompt(route):
        if route.request.method != "POST":
            route.continue_()
            return
        sent.append(json.loads(route.request.post_data or "{}"))
        route.fulfill(status=200, content_type="application/json", body=json.dumps(
            {"prompt_id": f"fake-{len(sent)}", "number": len(sent), "node_errors": {}}))

    page.route("**/prompt", on_prompt)
    return sent


def _slow_network(page) -> None:
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": LATENCY_MS, "downloadThroughput": -1, "uploadThroughput": -1})


def test_a_queue_pressed_while_an_example_loads_runs_the_example_not_the_old_graph(page):
    c = Canvas(page)
    c.open_file("old.json", small_txt2img())  # node 3 is a sampler here and in the example
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    sent = _fake_prompts(page)
    page.get_by_role("button", name="Examples", exact=True).click()
    browser = page.get_by_role("dialog", name="Examples")
    expect(browser.locator('.sf-example-card[data-example="ip_adapter.json"]')).to_be_visible()
    _slow_network(page)
    browser.locator('.sf-example-card[data-example="ip_adapter.json"] .sf-example-open').click()
    # the dialog stays, saying what it opens; the canvas under it takes no edit meanwhile
    expect(browser.get_by_test_id("examples-status")).to_contain_text("Opening")
    assert page.locator(".react-flow").evaluate("e => e.inert") is True
    page.keyboard.press("Control+Enter")  # the user queues at once
    expect(browser).to_be_hidden(timeout=20_000)
    expect(c.nodes()).to_have_count(11)
    expect(c.toasts().filter(has_text="Queued prompt")).to_be_visible(timeout=20_000)
    assert len(sent) == 1
    prompt = sent[0]["prompt"]
    assert len(prompt) == 11, sorted(v["class_type"] for v in prompt.values())
    assert {"ApplyIPAdapter", "IPAdapterModelLoader"} <= {v["class_type"] for v in prompt.values()}
    assert page.locator(".react-flow").evaluate("e => e.inert") is False
    # an edit made now is the example's, and the next Queue sends it
    c.set_value("3", "steps", "7")
    c.queue()
    expect(c.toasts().filter(has_text="Queued prompt #2")).to_be_visible(timeout=20_000)
    assert sent[1]["prompt"]["3"]["inputs"]["steps"] == 7
    assert len(sent[1]["prompt"]) == 11


def test_a_dropped_comfyui_file_blocks_the_canvas_until_it_is_converted(page):
    c = Canvas(page)
    c.open_file("old.json", small_txt2img())
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    sent = _fake_prompts(page)
    comfy = {
        "last_node_id": 2, "last_link_id": 0, "links": [], "groups": [], "version": 0.4,
        "nodes": [
            {"id": 1, "type": "PrimitiveInt", "pos": [0, 0], "size": [200, 80], "mode": 0,
             "inputs": [], "outputs": [{"name": "INT", "type": "INT", "links": []}],
             "widgets_values": [5, "fixed"]},
            {"id": 2, "type": "SVD_img2vid_Conditioning", "pos": [300, 0], "size": [200, 80],
             "mode": 0, "inputs": [], "outputs": [], "widgets_values": []},
        ],
    }
    _slow_network(page)
    c.drop_file("comfy.json", json.dumps(comfy).encode(), "application/json")
    expect(page.get_by_test_id("opening")).to_contain_text("comfy.json")
    page.keyboard.press("Control+Enter")
    expect(c.toasts().filter(has_text="Opened comfy.json")).to_be_visible(timeout=20_000)
    expect(page.get_by_test_id("opening")).to_have_count(0)
    # one warning for the unknown node, not the converter's and the client's both
    expect(c.toasts().filter(has_text="SVD_img2vid_Conditioning")).to_have_count(1)
    # the queue pressed meanwhile did not send the old graph (whatever it did with the new one)
    page.wait_for_timeout(1500)
    for body in sent:
        assert "KSampler" not in {v["class_type"] for v in body["prompt"].values()}, body


def test_one_undo_after_an_edit_made_at_once_on_an_opened_example_keeps_the_example(page):
    c = Canvas(page)
    c.open_example("sega.json")
    page.wait_for_timeout(600)
    before = len(c.document()["prompt"])
    c.open_example("train_new_shape_dreambooth.json")
    # within the history's 200 ms debounce of the graph coming in
    c.set_value("3", "steps", "7")
    page.locator(".react-flow__pane").click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+z")
    expect(c.widget("3", "steps")).to_have_value("25")
    opened = json.loads((REPO / "workflows" / "train_new_shape_dreambooth.json").read_text())
    assert len(c.document()["prompt"]) == len(opened["prompt"])
    page.keyboard.press("Control+z")  # the next undo goes back to the workflow opened before
    page.wait_for_function("n => Object.keys(window.steerflow.getDocument().prompt).length === n",
                           arg=before)
    page.keyboard.press("Control+y")
    expect(c.widget("3", "steps")).to_have_value("25")


def test_the_examples_dialog_keeps_the_focus_and_clear_asks_first(page):
    c = Canvas(page)
    c.open_file("kept.json", small_txt2img())
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    opener = page.get_by_role("button", name="Examples", exact=True)
    opener.focus()
    page.keyboard.press("Enter")
    browser = page.get_by_role("dialog", name="Examples")
    expect(browser.get_by_label("Search examples")).to_be_focused()
    page.keyboard.type("sega")
    inside = "() => !!document.activeElement.closest('[role=dialog][aria-label=Examples]')"
    for _ in range(8):  # Tab goes round the dialog's controls, never to the toolbar behind it
        page.keyboard.press("Tab")
        assert page.evaluate(inside), page.evaluate("() => document.activeElement.outerHTML")
    browser.get_by_label("Search examples").focus()
    page.keyboard.press("Shift+Tab")  # from the first control to the last
    assert page.evaluate(inside)
    assert page.evaluate("() => document.activeElement.classList.contains('sf-example-open')")
    page.keyboard.press("Escape")
    expect(browser).to_be_hidden()
    expect(opener).to_be_focused()

    # Clear asks first; Cancel (where the focus starts, so a stray Enter keeps the graph)
    page.locator(".sf-toolbar").get_by_role("button", name="Clear", exact=True).click()
    question = page.get_by_role("alertdialog", name="Clear the workflow?")
    expect(question).to_contain_text("7 nodes")
    expect(question.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(question.get_by_role("button", name="Cancel")).to_be_focused()  # trapped too
    page.keyboard.press("Enter")
    expect(question).to_be_hidden()
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    c.clear()
    page.locator(".react-flow__pane").click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+z")  # undoable anyway
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))


def test_first_visit_in_a_small_window_shows_the_whole_default_graph(browser_context,
                                                                     server: LiveServer):
    """800x600: the canvas beside the side panel is 560 px wide; the readable fit showed the
    graph's left part and cut off Sample, VAE Decode and Save Image."""
    page = browser_context.new_page()
    page.set_viewport_size({"width": 800, "height": 600})
    page.goto(server.url + "/")
    page.wait_for_function("() => document.querySelectorAll('.react-flow__node').length === 7")
    page.wait_for_timeout(800)  # the fit runs once the nodes are measured
    pane = page.locator(".react-flow").bounding_box()
    assert pane is not None
    for node in page.locator(".react-flow__node").all():
        box = node.bounding_box()
        assert box is not None
        assert (box["x"] >= pane["x"] - 1 and box["y"] >= pane["y"] - 1
                and box["x"] + box["width"] <= pane["x"] + pane["width"] + 1
                and box["y"] + box["height"] <= pane["y"] + pane["height"] + 1), (
            f"{node.inner_text()[:30]!r} is out of view: {box} in {pane}")
    page.close()


def _overlapping(c: Canvas, node_id: str) -> list[str]:
    return c.page.evaluate("""id => {
        const r = document.querySelector(`.react-flow__node[data-id="${id}"]`)
          .getBoundingClientRect();
        return [...document.querySelectorAll('.react-flow__node')].filter(e => e.dataset.id !== id)
          .filter(e => { const o = e.getBoundingClientRect();
            return r.left < o.right && o.left < r.right && r.top < o.bottom && o.top < r.bottom; })
          .map(e => e.dataset.id);
    }""", node_id)


def test_a_cloned_or_pasted_node_goes_to_free_space(page):
    c = Canvas(page)
    c.open_file("place.json", small_txt2img())
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    page.wait_for_timeout(500)
    before = set(c.node_ids())
    c.node("4").locator(".sf-header").click(button="right")
    page.get_by_role("menu", name="node menu").get_by_role("menuitem", name="Clone").click()
    expect(c.nodes()).to_have_count(len(before) + 1)
    (clone,) = set(c.node_ids()) - before
    page.wait_for_timeout(300)
    assert _overlapping(c, clone) == []
    # paste with the pointer over a node: the copy goes beside it, not over it
    c.node("6").locator(".sf-header").click()
    page.keyboard.press("Control+c")
    box = c.node("3").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 20)
    before = set(c.node_ids())
    page.keyboard.press("Control+v")
    expect(c.nodes()).to_have_count(len(before) + 1)
    (pasted,) = set(c.node_ids()) - before
    page.wait_for_timeout(300)
    assert _overlapping(c, pasted) == []


def test_the_lightbox_pages_through_a_nodes_images(page):
    c = Canvas(page)
    doc = small_txt2img()
    doc["prompt"]["5"]["inputs"]["batch_size"] = 2
    c.open_file("two.json", doc)
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    c.queue()
    images = c.node("9").locator("img.sf-output-image")
    expect(images).to_have_count(2, timeout=120_000)
    images.first.click()
    box = page.get_by_role("dialog", name="image")
    expect(box.get_by_test_id("lightbox-position")).to_have_text("1 / 2")
    first = box.locator("img").get_attribute("src")
    page.keyboard.press("ArrowRight")
    expect(box.get_by_test_id("lightbox-position")).to_have_text("2 / 2")
    assert box.locator("img").get_attribute("src") != first
    page.keyboard.press("ArrowLeft")
    expect(box.get_by_test_id("lightbox-position")).to_have_text("1 / 2")
    box.get_by_role("button", name="Previous image").click()  # round to the last
    expect(box.get_by_test_id("lightbox-position")).to_have_text("2 / 2")
    box.get_by_role("button", name="Next image").click()
    expect(box.get_by_test_id("lightbox-position")).to_have_text("1 / 2")
    page.keyboard.press("Escape")
    expect(box).to_have_count(0)


def test_reopening_a_workflow_queues_the_seed_it_shows_not_the_one_moved_on(page):
    """The templates drill's D1: after a queue on "randomize", opening the same workflow again
    (as dropping ComfyUI's PNG again to reproduce it) showed its seed but queued the one the
    earlier queue had moved on. What the field shows is what runs: after an open, and after
    typing back the seed the canvas showed before."""
    seed = 851616030078638
    doc = small_txt2img()
    doc["prompt"]["3"]["inputs"]["seed"] = seed
    doc["layout"]["nodes"]["3"]["control"] = {"seed": "randomize"}
    c = Canvas(page)
    sent = _fake_prompts(page)

    def queue_and_wait(n: int) -> int:
        page.locator(".react-flow__pane").click(position={"x": 5, "y": 5})
        c.queue()
        expect(c.toasts().filter(has_text=f"Queued prompt #{n}")).to_be_visible(timeout=20_000)
        assert len(sent) == n
        return sent[-1]["prompt"]["3"]["inputs"]["seed"]

    c.open_file("lora.json", doc)
    expect(c.widget("3", "seed")).to_have_value(str(seed))
    assert queue_and_wait(1) == seed
    expect(c.widget("3", "seed")).not_to_have_value(str(seed))  # randomize moved it on
    c.open_file("lora.json", doc)  # the same file again
    expect(c.widget("3", "seed")).to_have_value(str(seed))  # opened again
    # its toast took the first one's place: opening in a row does not stack them
    expect(c.toasts().filter(has_text="Opened lora")).to_have_count(1)
    assert queue_and_wait(2) == seed
    # another workflow sharing the node id and the seed: its own seed too
    other = small_txt2img(steps=3)
    other["prompt"]["3"]["inputs"]["seed"] = seed
    other["layout"]["nodes"]["3"]["control"] = {"seed": "randomize"}
    c.open_file("first_pass.json", other)
    expect(c.widget("3", "steps")).to_have_value("3")
    expect(c.widget("3", "seed")).to_have_value(str(seed))
    assert queue_and_wait(3) == seed
    # the seed typed back to the one the canvas showed before the move
    expect(c.widget("3", "seed")).not_to_have_value(str(seed))
    page.wait_for_timeout(300)
    c.set_value("3", "seed", str(seed))
    expect(c.widget("3", "seed")).to_have_value(str(seed))
    assert queue_and_wait(4) == seed
