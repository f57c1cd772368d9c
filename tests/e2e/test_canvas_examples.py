"""The examples browser: every example's card, opening one, and the model card where the
checkpoint is picked."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.canvas import NOT_WHOLLY_IN_VIEW, Canvas
from tests.e2e.conftest import LiveServer


def test_browser_shows_every_example_with_title_description_and_thumbnail(page, server: LiveServer):
    names = server.get("/workflows")
    details = {d["name"]: d for d in server.get("/workflows?details=1")}
    page.get_by_role("button", name="Examples", exact=True).click()
    browser = page.get_by_role("dialog", name="Examples")
    cards = browser.locator(".sf-example-card")
    expect(cards).to_have_count(len(names))
    with_thumbnail = 0
    for name in names:
        card = browser.locator(f'.sf-example-card[data-example="{name}"]')
        card.scroll_into_view_if_needed()  # thumbnails load lazily, as they scroll into view
        expect(card.locator(".sf-example-title")).to_have_text(details[name]["title"])
        description = card.locator(".sf-example-description").inner_text()
        assert len(description) > 20, name
        if details[name]["thumbnail"]:
            thumb = card.locator("img.sf-example-thumb")
            expect(thumb).to_be_visible()
            # a real image, not a broken one
            page.wait_for_function("e => e.complete && e.naturalWidth > 0",
                                   arg=thumb.element_handle())
            with_thumbnail += 1
        else:
            expect(card.get_by_test_id("thumbnail-placeholder")).to_be_visible()
    assert with_thumbnail >= 25
    # no card is squeezed: its title and description are not cut off at the bottom
    clipped = cards.evaluate_all(
        "els => els.filter(e => e.scrollHeight > e.clientHeight + 1).map(e => e.dataset.example)")
    assert not clipped, f"cards cut off: {clipped}"
    # the search narrows the cards; Escape closes the browser
    browser.get_by_label("Search examples").fill("semantic guidance")
    expect(cards.filter(has_text="SEGA").first).to_be_visible()
    assert cards.count() < len(names)
    page.keyboard.press("Escape")
    expect(browser).to_be_hidden()


def test_open_an_example_from_its_card_and_read_a_widget(page):
    c = Canvas(page)
    page.get_by_role("button", name="Examples", exact=True).click()
    page.get_by_role("dialog", name="Examples").get_by_role(
        "button", name="Open SEGA + ControlNet + LoRA + inpainting").click()
    expect(c.node("21")).to_be_visible()
    expect(c.widget("21", "text")).to_have_value("blue")
    expect(c.widget("30", "lora_name")).to_have_value("steerflow-shapes-night.safetensors")
    expect(page.locator(".sf-docname")).to_have_text("combined")


# Records, at the first animation frame that has nodes in the DOM, what they show.
FIRST_FRAME = """() => {
  window.__firstFrame = null;
  const look = () => {
    const nodes = document.querySelectorAll('.react-flow__node');
    if (!nodes.length) return requestAnimationFrame(look);
    const sega = document.querySelector(
      '.react-flow__node[data-id="21"] .sf-input[data-input="text"] :is(input, textarea)');
    window.__firstFrame = {
      nodes: nodes.length,
      widgets: document.querySelectorAll(
        '.react-flow__node .sf-input :is(input, select, textarea)').length,
      sega: sega ? sega.value : null,
    };
  };
  requestAnimationFrame(look);
}"""


def test_combined_example_renders_its_widgets_on_the_first_frame(page):
    """The first frame that shows the combined example's nodes already shows their widgets
    (no empty node bodies filled in a frame later)."""
    page.evaluate(FIRST_FRAME)
    Canvas(page).open_example("combined.json")
    page.wait_for_function("() => window.__firstFrame !== null")
    first = page.evaluate("() => window.__firstFrame")
    assert first["nodes"] >= 15 and first["widgets"] > 20, first
    assert first["sega"] == "blue", first


def test_load_checkpoint_shows_the_models_native_size_and_what_it_draws(page):
    c = Canvas(page)
    c.open_example("txt2img.json")
    expect(c.widget("4", "ckpt_name")).to_have_value("steerflow-shapes")
    card = c.node("4").get_by_test_id("model-card")
    expect(card).to_contain_text("64×64")
    expect(card).to_contain_text("circle")
    expect(card).to_contain_text("background")
    # a model without a card shows none
    c.widget("4", "ckpt_name").select_option("steerflow-tiny")
    expect(c.node("4").get_by_test_id("model-card")).to_contain_text("random")


def test_an_example_opens_whole_in_a_small_window(page):
    """At 1280x800 every example but one opened at the readable zoom with its Save Image cut
    off or hidden (the first-time walk): an example opens as the first visit's graph does,
    wholly in view, zoomed out as far as that needs."""
    page.set_viewport_size({"width": 1280, "height": 800})
    c = Canvas(page)
    for name in ("img2img.json", "sega.json", "combined.json"):
        c.open_example(name)
        expect(c.nodes().first).to_be_visible()
        page.wait_for_function(f"() => ({NOT_WHOLLY_IN_VIEW})().length === 0", timeout=10_000)
