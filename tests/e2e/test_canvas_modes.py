"""Muted and bypassed nodes on the canvas, and a queued prompt's warnings."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.canvas import Canvas

MUTED = re.compile(r"\bsf-muted\b")


@pytest.mark.slow
def test_muted_node_round_trips_and_the_queue_reply_warns(page):
    c = Canvas(page)
    wf = {  # ComfyUI's UI format, converted by the server: Int (muted) -> Int Math -> Show Value
        "nodes": [
            {"id": 1, "type": "PrimitiveInt", "pos": [0, 0], "mode": 2,
             "outputs": [{"name": "INT", "type": "INT", "links": [1]}],
             "widgets_values": [5, "fixed"]},
            {"id": 2, "type": "IntMath", "pos": [300, 0],
             "inputs": [{"name": "a", "type": "INT", "link": 1, "widget": {"name": "a"}}],
             "outputs": [{"name": "INT", "type": "INT", "links": [2]}],
             "widgets_values": [0, 4, "add"]},
            {"id": 3, "type": "ShowValue", "pos": [600, 0],
             "inputs": [{"name": "value", "type": "*", "link": 2}]},
        ],
        "links": [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "INT"]],
        "groups": [], "extra": {}, "version": 0.4,
    }
    c.open_file("muted.json", wf)
    expect(c.nodes()).to_have_count(3)
    expect(c.node("1").locator(".sf-node")).to_have_class(MUTED)
    assert c.document()["prompt"]["1"]["mode"] == "muted"
    c.queue()
    # the muted Int is left out: Int Math's a falls back to its default, with a warning
    expect(c.toasts().filter(has_text="Warning: node 2")).to_be_visible()
    expect(c.node("3")).to_contain_text("4", timeout=60_000)
    # Ctrl+M on the selected node makes it run again
    c.node("1").locator(".sf-header").click()
    page.keyboard.press("Control+m")
    expect(c.node("1").locator(".sf-node")).not_to_have_class(MUTED)
    assert "mode" not in c.document()["prompt"]["1"]
