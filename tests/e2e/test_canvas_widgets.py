"""Number widgets: a bad value is marked on the widget and kept as typed, never silently changed."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.canvas import Canvas
from tests.e2e.test_canvas import small_txt2img


def test_bad_number_values_are_marked_not_changed(page):
    c = Canvas(page)
    doc = small_txt2img()
    c.open_file("widgets.json", doc)
    sampler = c.node("3")

    c.set_value("3", "steps", "-5")
    steps = c.widget("3", "steps")
    expect(steps).to_have_value("-5")  # the field shows what will run
    expect(steps).to_have_attribute("aria-invalid", "true")
    issue = sampler.locator('.sf-input[data-input="steps"] .sf-widget-issue')
    expect(issue).to_have_text("-5 is below the minimum 1")
    assert c.document()["prompt"]["3"]["inputs"]["steps"] == -5

    c.set_value("3", "cfg", "abc")
    cfg = c.widget("3", "cfg")
    expect(cfg).to_have_value("abc")
    issue = sampler.locator('.sf-input[data-input="cfg"] .sf-widget-issue')
    expect(issue).to_have_text("“abc” is not a number")
    assert c.document()["prompt"]["3"]["inputs"]["cfg"] == "abc"

    # queued as shown: the server refuses it, and says why on the node
    c.queue()
    expect(c.toasts().filter(has_text="Prompt rejected")).to_be_visible()
    expect(sampler.locator(".sf-issue").first).to_be_visible()

    # good values clear the marks; arrow keys step within the range
    c.set_value("3", "steps", "3")
    c.set_value("3", "cfg", "7.5")
    expect(sampler.locator(".sf-widget-issue")).to_have_count(0)
    cfg.focus()
    page.keyboard.press("ArrowUp")
    expect(cfg).to_have_value("7.6")  # one step of 0.1
    assert c.document()["prompt"]["3"]["inputs"]["steps"] == 3


def test_a_float_shows_the_value_that_runs_and_a_click_in_and_out_keeps_it(page):
    """The first-time walk: cfg 7.456789 showed "7.46" (and ran 7.456789), 100.004 showed
    "100" next to "100.004 is above the maximum 100", and a learning rate of 5e-7 showed
    "0"; a click in the field and out again then saved the rounded text."""
    c = Canvas(page)
    doc = small_txt2img()
    doc["prompt"]["3"]["inputs"].update(cfg=7.456789, denoise=5e-7)
    c.open_file("exact.json", doc)
    cfg, denoise = c.widget("3", "cfg"), c.widget("3", "denoise")
    expect(cfg).to_have_value("7.456789")
    expect(denoise).to_have_value("5e-7")
    for field in (cfg, denoise):
        field.click()
        page.locator(".react-flow__pane").click(position={"x": 5, "y": 5})
    page.wait_for_timeout(400)
    inputs = c.document()["prompt"]["3"]["inputs"]
    assert (inputs["cfg"], inputs["denoise"]) == (7.456789, 5e-7)
    expect(c.node("3").locator(".sf-widget-issue")).to_have_count(0)


def test_ctrl_z_in_a_text_box_undoes_the_typed_run(page):
    """The browser's own undo in a prompt box takes back what was just typed at once, as in
    any text box (a value written back on every keystroke made it one character a press)."""
    c = Canvas(page)
    c.open_file("text.json", small_txt2img())
    c.wait_saved(7, "text")  # the opened graph is the history's base
    box = c.widget("7", "text")
    box.click()
    page.keyboard.type("blurry, noisy ugly")
    expect(box).to_have_value("blurry, noisy ugly")
    page.keyboard.press("Control+z")
    expect(box).to_have_value("")
    assert c.document()["prompt"]["7"]["inputs"]["text"] == ""
    # the canvas's own undo (focus off the box) still reaches the box: box and graph agree
    page.keyboard.type("sharp")
    page.locator(".react-flow__pane").click(position={"x": 5, "y": 5})
    # the canvas's history settles edits for a moment: the step is made with the autosave
    c.wait_saved_inputs("7", text="sharp")
    page.keyboard.press("Control+z")
    expect(box).not_to_have_value("sharp")
    page.wait_for_function("""() => window.steerflow.getDocument()
        .prompt['7'].inputs.text !== 'sharp'""")
    assert box.input_value() == c.document()["prompt"]["7"]["inputs"]["text"] != "sharp"


def test_room_made_for_a_growing_node_is_no_undo_step(page):
    """A node that grows in a run (Save Image showing its result) pushes the node below it
    down; that move amends the present undo step instead of being one: Ctrl+Z undoes the
    last step (here the open itself), not the move alone."""
    c = Canvas(page)
    doc = small_txt2img()
    x, y = doc["layout"]["nodes"]["9"]["pos"]
    doc["layout"]["nodes"]["8"]["pos"] = [x, y + 120]  # under Save Image once it shows a result
    c.open_file("grow.json", doc)
    # the opened graph is an undo step as it opens (before any edit or run)
    c.wait_saved(7, "grow")
    before = c.document()["layout"]["nodes"]["8"]["pos"][1]
    c.queue()
    expect(c.node("9").locator("img").first).to_be_visible(timeout=120_000)
    page.wait_for_function(f"""() => window.steerflow.getDocument()
        .layout.nodes['8'].pos[1] > {before}""", timeout=10_000)
    page.wait_for_timeout(1000)
    moved = c.document()["layout"]["nodes"]["8"]["pos"][1]
    # the move has settled into the history (the autosave is written with it)
    page.wait_for_function("""y => JSON.parse(localStorage.getItem('steerflow.autosave'))
        .layout.nodes['8'].pos[1] === y""", arg=moved, timeout=10_000)
    page.locator(".react-flow__pane").click(position={"x": 5, "y": 5})
    # opening the file is an undo step (made when it opened); the move amended it, so one
    # Ctrl+Z undoes the open (back to the cleared canvas), not the move alone ...
    page.keyboard.press("Control+z")
    expect(c.nodes()).to_have_count(0)
    # ... and redo brings the file back as the run left it, the room made included
    page.keyboard.press("Control+y")
    expect(c.node("8")).to_be_visible()
    assert c.document()["layout"]["nodes"]["8"]["pos"][1] == moved
