"""Results on the canvas: they survive a reload, a fully cached re-queue shows them,
and History describes each run."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.canvas import Canvas
from tests.e2e.conftest import LiveServer
from tests.e2e.test_canvas import small_txt2img

SAVE = "9"  # Save Image in workflows/txt2img.json


@pytest.mark.slow
def test_results_survive_reload_and_a_cached_requeue_shows_them(page, browser_context,
                                                                server: LiveServer):
    c = Canvas(page)
    doc = small_txt2img()
    doc["prompt"]["6"]["inputs"]["text"] = "results e2e: a green square"
    doc["prompt"]["3"]["inputs"]["seed"] = 777
    c.open_file("results.json", doc)
    c.node("3").get_by_label("seed control after generate").select_option("fixed")
    prompt_id = c.queue_id()
    image = c.node(SAVE).locator("img.sf-output-image")
    expect(image).to_be_visible(timeout=180_000)
    first = image.get_attribute("src")
    # the reload reads the results from the history: its entry is written after the image
    # shows (a reload in between is another case: the run is then still in flight)
    server.wait_history(prompt_id)
    # the reload opens the autosave: the graph that ran ("fixed" kept its seed), not the one
    # before the seed control was set (a fast run can end within the autosave's 200 ms)
    c.wait_saved_control("3", seed="fixed")
    c.wait_saved_inputs("3", seed=777)

    # reload: the graph comes back from the autosave and its image from the server's history
    page.reload()
    page.wait_for_selector(".sf-dot.on")
    expect(c.node(SAVE).locator("img.sf-output-image")).to_have_attribute("src", first)
    page.get_by_role("tab", name="Gallery").click()
    expect(page.locator(".sf-gallery img").first).to_be_visible()

    # a second tab opens the same workflow fresh (no results) and queues it: every node is
    # cached, and the image still lands on Save Image
    other = browser_context.new_page()
    other.goto(server.url + "/")
    other.wait_for_selector(".sf-dot.on")
    c2 = Canvas(other)
    c2.open_file("results.json", doc)
    expect(c2.node(SAVE).locator("img.sf-output-image")).to_have_count(0)
    c2.node("3").get_by_label("seed control after generate").select_option("fixed")
    c2.queue()
    expect(c2.node(SAVE).locator("img.sf-output-image")).to_be_visible(timeout=60_000)
    expect(c2.node(SAVE).locator(".sf-node")).to_have_attribute("data-status", "cached")
    other.close()


@pytest.mark.slow
def test_history_entry_shows_time_duration_prompt_size_view_and_load(page, server: LiveServer):
    doc = small_txt2img()
    doc["prompt"]["6"]["inputs"]["text"] = "history e2e: a purple triangle"
    doc["extra"] = {**doc.get("extra", {}), "name": "purple triangle"}  # as the canvas queues it
    res = server.post("/prompt", {"prompt": doc["prompt"], "client_id": "e2e",
                                  "extra_data": {"extra_pnginfo": {"workflow": doc}}})
    server.wait_history(res["prompt_id"])
    page.get_by_role("tab", name="History").click()
    item = page.locator(f'.sf-history-item[data-prompt-id="{res["prompt_id"]}"]')
    expect(item).to_contain_text("success")
    expect(item).to_contain_text("history e2e: a purple triangle")
    expect(item.locator("time")).to_have_count(1)
    expect(item.get_by_test_id("duration")).to_contain_text(re.compile(r"\d+(\.\d)? (ms|s)"))
    expect(item.get_by_test_id("output-size")).to_contain_text("1 image · 64×64")
    seed = doc["prompt"]["3"]["inputs"]["seed"]
    expect(item.get_by_test_id("seeds")).to_have_text(f" · seed {seed}")
    item.get_by_role("button", name="View").click()
    dialog = page.get_by_role("dialog", name="image")
    expect(dialog.locator("img")).to_be_visible()
    dialog.get_by_role("button", name="Close").click()
    item.get_by_role("button", name="Load").click()
    c = Canvas(page)
    expect(c.nodes()).to_have_count(len(doc["prompt"]))
    expect(c.widget("6", "text")).to_have_value("history e2e: a purple triangle")
    expect(page.locator(".sf-docname")).to_have_text("purple triangle")  # not "workflow"
    # one entry deleted, as ComfyUI's history list allows: gone here and on the server
    page.get_by_role("tab", name="History").click()
    item.get_by_role("button", name="Delete").click()
    expect(item).to_have_count(0)
    assert res["prompt_id"] not in server.get("/history")


@pytest.mark.slow
def test_tab_closed_mid_run_reopened_shows_the_runs_image_when_it_ends(page, browser_context,
                                                                     server: LiveServer):
    """A tab closed while its prompt runs, and a new tab opened meanwhile: the new tab (another
    client, so it gets no run events) shows no stale image at load (the older run was made
    with another seed and steps: restored results must come from what feeds the node now)
    and picks up the run that was in flight when it ends, so Save Image shows its result.
    (In flight: waiting behind another client's run, which the test ends when it has looked.)"""
    c = Canvas(page)
    doc = small_txt2img()
    doc["prompt"]["6"]["inputs"]["text"] = "closed tab e2e: a red circle"
    c.open_file("closedtab.json", doc)
    c.node("3").get_by_label("seed control after generate").select_option("fixed")
    c.queue()
    expect(c.node(SAVE).locator("img.sf-output-image")).to_be_visible(timeout=180_000)
    old = c.node(SAVE).locator("img.sf-output-image").get_attribute("src") or ""

    # a prompt of another client in front: this tab's prompt is still in flight (waiting)
    # when the tab is closed and the new one loads, however fast the machine (a long run of
    # its own could end first), and it runs when the test says so
    blocker = server.post("/prompt", {"prompt": small_txt2img(steps=5000)["prompt"],
                                      "client_id": "closed-tab-blocker"})["prompt_id"]
    try:
        c.set_value("3", "steps", "3")
        c.set_value("3", "seed", "4242")
        # the new tab opens the autosaved graph: it must be this one, not the one before the
        # edits
        c.wait_saved_inputs("3", steps=3, seed=4242)
        prompt_id = c.queue_id()
        assert prompt_id in {i[1] for i in server.get("/queue")["queue_pending"]}

        other = browser_context.new_page()
        other.goto(server.url + "/")
        other.wait_for_selector(".sf-dot.on")
        page.close()
        c2 = Canvas(other)
        image = c2.node(SAVE).locator("img.sf-output-image")
        expect(c2.node(SAVE)).to_be_visible()
        expect(c2.widget("3", "seed")).to_have_value("4242")
        # the older run's image is another seed's: never restored (the results at load are
        # read meanwhile; the new run has not started)
        for _ in range(30):
            shown = image.evaluate_all("els => els.map((e) => e.getAttribute('src'))")
            assert old not in shown, "the older run's image was restored"
            other.wait_for_timeout(100)
        assert prompt_id in {i[1] for i in server.get("/queue")["queue_pending"]}
    finally:
        server.post("/queue", {"delete": [blocker]})
        server.post("/interrupt", {"prompt_id": blocker})
    entry = server.wait_history(prompt_id)
    new = entry["outputs"][SAVE]["images"][0]["filename"]
    assert new not in old
    expect(image).to_have_attribute("src", re.compile(re.escape(new)), timeout=30_000)
    other.close()


@pytest.mark.slow
def test_history_load_puts_the_entrys_images_on_the_graph_at_once(page, server: LiveServer):
    """History's Load opened the workflow with Save Image empty; its image came only after
    a reload (the first-time walk)."""
    c = Canvas(page)
    doc = small_txt2img()
    doc["prompt"]["6"]["inputs"]["text"] = "history load e2e: a green star"
    c.open_file("histload.json", doc)
    prompt_id = c.queue_id()
    expect(c.node(SAVE).locator("img.sf-output-image")).to_be_visible(timeout=180_000)
    entry = server.wait_history(prompt_id)
    shown = entry["outputs"][SAVE]["images"][0]["filename"]
    other = small_txt2img()
    other["prompt"]["6"]["inputs"]["text"] = "another graph, never run"
    c.open_file("other.json", other)
    expect(c.node(SAVE).locator("img.sf-output-image")).to_have_count(0)
    page.get_by_role("tab", name="History").click()
    page.locator(f'.sf-history-item[data-prompt-id="{prompt_id}"]').get_by_role(
        "button", name="Load").click()
    expect(c.nodes()).to_have_count(len(doc["prompt"]))
    expect(c.node(SAVE).locator("img.sf-output-image")).to_have_attribute(
        "src", re.compile(re.escape(shown)))
    # undone, the Load takes its image with it: it is not the other graph's (the third walk)
    c.node("6").locator(".sf-header").click()
    page.keyboard.press("Control+z")
    expect(c.node("6").locator("textarea")).to_have_value("another graph, never run")
    expect(c.node(SAVE).locator("img.sf-output-image")).to_have_count(0)


def test_a_queued_workflow_carries_its_name_back_from_history(page, server: LiveServer):
    """History's Load renamed the tab's workflow "workflow" (a newcomer's walk: Save then wrote
    workflow.json): the canvas queues the document with its name, and Load opens it under it."""
    doc = small_txt2img()
    doc["prompt"]["6"]["inputs"]["text"] = "named e2e: a cyan diamond"  # not cached by another test
    c = Canvas(page)
    c.open_file("my-diamonds.json", doc)
    expect(page.locator(".sf-docname")).to_have_text("my-diamonds")
    prompt_id = c.queue_id()
    entry = server.wait_history(prompt_id)
    assert entry["prompt"][3]["extra_pnginfo"]["workflow"]["extra"]["name"] == "my-diamonds"
    c.clear()
    page.get_by_role("tab", name="History").click()
    item = page.locator(f'.sf-history-item[data-prompt-id="{prompt_id}"]')
    item.get_by_role("button", name="Load").click()
    expect(c.nodes()).to_have_count(len(doc["prompt"]))
    expect(page.locator(".sf-docname")).to_have_text("my-diamonds")


def test_history_load_shows_that_entrys_own_image(page, server: LiveServer):
    """With the seed's control on increment, History → Load of an older entry put the newest
    run's image (another seed) on Save Image beside the entry's own seed (a newcomer's walk)."""
    entries = []
    for seed in (11, 12):  # the older one first
        doc = small_txt2img()
        doc["prompt"]["6"]["inputs"]["text"] = "exact history e2e: a yellow cross"
        doc["prompt"]["3"]["inputs"]["seed"] = seed
        doc["layout"]["nodes"]["3"]["control"] = {"seed": "increment"}
        res = server.post("/prompt", {"prompt": doc["prompt"], "client_id": "e2e",
                                      "extra_data": {"extra_pnginfo": {"workflow": doc}}})
        entries.append(server.wait_history(res["prompt_id"]))
    older = entries[0]["outputs"]["9"]["images"][0]["filename"]
    assert older != entries[1]["outputs"]["9"]["images"][0]["filename"]
    page.get_by_role("tab", name="History").click()
    first = entries[0]["prompt"][1]
    page.locator(f'.sf-history-item[data-prompt-id="{first}"]').get_by_role(
        "button", name="Load").click()
    c = Canvas(page)
    expect(c.widget("3", "seed")).to_have_value("11")
    expect(c.node("9").locator("img.sf-output-image")).to_have_attribute(
        "src", re.compile(re.escape(older)))


def test_a_graph_opened_over_is_kept_across_a_reload(page):
    """Opening another graph (an example, a file, a History entry) replaced an unsaved graph
    for good once the page was reloaded (undo's history is the page's): it is kept in the
    History tab's "replaced" list (a newcomer's walk)."""
    c = Canvas(page)
    c.open_file("unsaved.json", small_txt2img())
    c.set_value("6", "text", "MY UNSAVED WORK")
    c.wait_saved_inputs("6", text="MY UNSAVED WORK")
    c.open_example("txt2img.json")
    expect(c.widget("6", "text")).not_to_have_value("MY UNSAVED WORK")
    page.reload()
    page.wait_for_selector(".sf-dot.on")
    page.get_by_role("tab", name="History").click()
    kept = page.get_by_test_id("replaced-graphs")
    kept.locator("summary").click()
    row = kept.locator("li").filter(has_text="unsaved").first
    row.get_by_role("button", name="Open").click()
    expect(c.widget("6", "text")).to_have_value("MY UNSAVED WORK")
    expect(page.locator(".sf-docname")).to_have_text("unsaved")


def test_history_size_line_names_each_size_of_its_images(page, server: LiveServer):
    """An edit then upscale run read "3 images · 64×64" though its result was 128×128: the size
    line read the first image only (a newcomer's walk)."""
    doc = small_txt2img()
    doc["prompt"]["6"]["inputs"]["text"] = "sizes e2e: a cyan triangle"
    doc["prompt"]["10"] = {"class_type": "ImageScaleBy", "inputs": {
        "image": ["8", 0], "upscale_method": "nearest-exact", "scale_by": 2.0}}
    doc["prompt"]["11"] = {"class_type": "SaveImage",
                           "inputs": {"images": ["10", 0], "filename_prefix": "sizes"}}
    res = server.post("/prompt", {"prompt": doc["prompt"], "client_id": "e2e"})
    server.wait_history(res["prompt_id"])
    page.get_by_role("tab", name="History").click()
    item = page.locator(f'.sf-history-item[data-prompt-id="{res["prompt_id"]}"]')
    expect(item.get_by_test_id("output-size")).to_have_text("2 images · 64×64, 128×128")


def test_a_history_image_dragged_onto_load_image_becomes_its_input(page, server: LiveServer):
    """A result could reach an edit graph only through the disk (View → download → upload):
    dragging a History or Gallery thumbnail onto Load Image did nothing (a newcomer's walk).
    Dropped there, it is uploaded into input/ and picked, as a file dropped from the desktop."""
    doc = small_txt2img()
    doc["prompt"]["6"]["inputs"]["text"] = "drag e2e: a green square"
    res = server.post("/prompt", {"prompt": doc["prompt"], "client_id": "e2e"})
    entry = server.wait_history(res["prompt_id"])
    made = entry["outputs"]["9"]["images"][0]["filename"]
    c = Canvas(page)
    loader = c.add_node("Load Image", 80, 80)
    page.get_by_role("tab", name="History").click()
    thumb = page.locator(f'.sf-history-item[data-prompt-id="{res["prompt_id"]}"] img').first
    thumb.drag_to(c.node(loader).locator(".sf-header"))
    expect(c.toasts().filter(has_text=f"Uploaded {made}")).to_have_count(1)
    picked = re.compile(re.escape(made.removesuffix(".png")))
    expect(c.widget(loader, "image")).to_have_value(picked)


def test_the_workflow_is_renamed_in_place_and_saved_under_that_name(page, server: LiveServer):
    """No way to name a workflow: Save downloaded "<title>.json" with no say, silently.
    Save now keeps it in the server's workflow library under that name (as ComfyUI's Save
    does; Export downloads it, under the same name)."""
    c = Canvas(page)
    c.open_file("named.json", small_txt2img())
    page.get_by_role("button", name="workflow name: named, rename").click()
    field = page.get_by_label("workflow name")
    field.fill("my hearts / v2")
    field.press("Enter")
    expect(page.locator(".sf-docname")).to_have_text("my hearts - v2")
    page.locator(".sf-toolbar").get_by_role("button", name="Save", exact=True).click()
    saved = c.toasts().filter(has_text="Saved my hearts - v2.json to the Workflows library")
    expect(saved).to_have_count(1)
    assert "nodes" in server.get("/userdata/workflows%2Fmy%20hearts%20-%20v2.json")
    with page.expect_download() as got:
        page.locator(".sf-toolbar").get_by_role("button", name="Export", exact=True).click()
    assert got.value.suggested_filename == "my hearts - v2.json"
    # Ctrl+S in the field saves under the name typed there; a name no file can carry is made one
    page.get_by_role("button", name="workflow name: my hearts - v2, rename").click()
    page.get_by_label("workflow name").fill('..a:b?')
    page.get_by_label("workflow name").press("Control+s")
    expect(page.locator(".sf-docname")).to_have_text("a-b-")
    expect(c.toasts().filter(has_text="Saved a-b-.json")).to_have_count(1)
    assert "nodes" in server.get("/userdata/workflows%2Fa-b-.json")
    # Escape drops an edit
    page.get_by_role("button", name="workflow name: a-b-, rename").click()
    page.get_by_label("workflow name").fill("nope")
    page.get_by_label("workflow name").press("Escape")
    expect(page.locator(".sf-docname")).to_have_text("a-b-")


def test_history_shows_a_seed_beyond_2_53_exactly(page, server: LiveServer):
    """A run with seed 9007199254740993 was listed as 9007199254740992 (parsed as a double)."""
    doc = small_txt2img()
    doc["prompt"]["6"]["inputs"]["text"] = "big seed e2e: a red star"
    doc["prompt"]["3"]["inputs"]["seed"] = 9007199254740993
    res = server.post("/prompt", {"prompt": doc["prompt"], "client_id": "e2e"})
    server.wait_history(res["prompt_id"])
    page.get_by_role("tab", name="History").click()
    item = page.locator(f'.sf-history-item[data-prompt-id="{res["prompt_id"]}"]')
    expect(item.get_by_test_id("seeds")).to_have_text(" · seed 9007199254740993")
    item.get_by_role("button", name="Load").click()
    expect(Canvas(page).widget("3", "seed")).to_have_value("9007199254740993")
