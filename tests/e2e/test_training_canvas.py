"""A training node on the canvas: the live loss curve and the sample images every N steps
(web/src/lib/runstore.ts, web/src/canvas/LossCurve.tsx, nodes/diffusion/train_preview.py)."""

from __future__ import annotations

import copy
import json

import pytest
from playwright.sync_api import expect

from tests.e2e.canvas import Canvas
from tests.e2e.conftest import REPO, LiveServer

TRAIN_LORA = json.loads((REPO / "workflows" / "train_lora.json").read_text())
TRAIN, SAVE = "21", "9"
STEPS, EVERY = 8, 3  # samples after steps 3, 6 and 8 (the last)


def tiny_training() -> dict:
    """The shipped Train LoRA workflow on the tiny model: few steps, 32 px."""
    doc = copy.deepcopy(TRAIN_LORA)
    p = doc["prompt"]
    p["4"]["inputs"]["ckpt_name"] = "steerflow-tiny"
    p[TRAIN]["inputs"].update(steps=STEPS, resolution=32, batch_size=1, learning_rate=1e-2,
                              save_name="", sample_every=EVERY, sample_prompt="a red sks")
    p["5"]["inputs"].update(width=32, height=32, batch_size=1)
    p["3"]["inputs"]["steps"] = 2
    return doc


@pytest.mark.slow
def test_training_shows_a_loss_curve_and_sample_images(page, server: LiveServer):
    doc = tiny_training()
    c = Canvas(page)
    c.open_file("train_tiny.json", doc)
    expect(c.nodes()).to_have_count(len(doc["prompt"]))
    expect(c.widget(TRAIN, "sample_every")).to_have_value(str(EVERY))
    node = c.node(TRAIN)
    c.queue()

    # the curve gets one point per step and stays on the node with the result
    curve = node.locator(".sf-loss")
    expect(curve).to_have_attribute("data-points", str(STEPS), timeout=180_000)
    expect(node.locator("svg[aria-label^='loss curve'] polyline.sf-loss-raw")).to_have_count(1)
    raw = node.locator("polyline.sf-loss-raw").get_attribute("points") or ""
    assert len(raw.split()) == STEPS
    expect(node.locator("polyline.sf-loss-smooth")).to_have_count(1)
    expect(curve.locator("[data-label='min']")).to_contain_text("min ")
    expect(curve.locator("[data-label='max']")).to_contain_text("max ")
    expect(c.node(SAVE).locator("img.sf-output-image").first).to_be_visible(timeout=60_000)
    expect(node.locator(".sf-node")).to_have_attribute("data-status", "done")

    # the last sample (after the last step) is the node's image once it is done: a real
    # image of the training size, kept in the history, so a reload shows it again
    for _ in range(2):
        kept = node.locator("img.sf-output-image")
        expect(kept).to_have_count(1)
        expect(node.locator("img.sf-sample")).to_have_count(0)
        page.wait_for_function(
            "el => el.complete && el.naturalWidth > 0", arg=kept.element_handle())
        assert kept.evaluate("el => [el.naturalWidth, el.naturalHeight]") == [32, 32]
        page.reload()
        page.wait_for_selector(".sf-dot.on")

