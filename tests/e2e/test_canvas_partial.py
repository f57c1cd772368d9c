"""The canvas's "Run selected": only the selected output nodes (and what they need) run,
posted as ComfyUI's ``partial_execution_targets``."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from tests.e2e.canvas import Canvas


@pytest.mark.slow
def test_run_selected_runs_only_the_selected_output(page, server):
    c = Canvas(page)
    wf = {  # Int -> Int Math -> Show Value (3); Int -> Show Value (4)
        "nodes": [
            {"id": 1, "type": "PrimitiveInt", "pos": [0, 0],
             "outputs": [{"name": "INT", "type": "INT", "links": [1, 3]}],
             "widgets_values": [5, "fixed"]},
            {"id": 2, "type": "IntMath", "pos": [300, 0],
             "inputs": [{"name": "a", "type": "INT", "link": 1, "widget": {"name": "a"}}],
             "outputs": [{"name": "INT", "type": "INT", "links": [2]}],
             "widgets_values": [0, 4, "add"]},
            {"id": 3, "type": "ShowValue", "pos": [600, 0],
             "inputs": [{"name": "value", "type": "*", "link": 2}]},
            {"id": 4, "type": "ShowValue", "pos": [600, 300],
             "inputs": [{"name": "value", "type": "*", "link": 3}]},
        ],
        "links": [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "INT"], [3, 1, 0, 4, 0, "INT"]],
        "groups": [], "extra": {}, "version": 0.4,
    }
    c.open_file("partial.json", wf)
    expect(c.nodes()).to_have_count(4)
    before = set(server.get("/history"))
    c.node("3").locator(".sf-header").click()
    page.get_by_test_id("run-selected").click()
    expect(c.node("3")).to_contain_text("9", timeout=60_000)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = {k: v for k, v in server.get("/history").items() if k not in before}
        if new:
            break
        time.sleep(0.2)
    [entry] = new.values()
    assert set(entry["outputs"]) == {"3"}  # node 4 was not run
    assert entry["prompt"][2]["4"]["class_type"] == "ShowValue"  # though it was sent
