"""A second first-time walk, fixed: each tab's own autosave, a lost server shown as lost (and
its re-queued prompt said so), a collapsible side panel at 800x600, a primitive that takes the
seed it is linked to, and toasts that close and do not outlive their workflow."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.canvas import Canvas
from tests.e2e.conftest import REPO, LiveServer, _free_port
from tests.e2e.test_canvas import small_txt2img

MISSING_CKPT = "walk3_missing.safetensors"


def _with_text(doc: dict, text: str) -> dict:
    doc = copy.deepcopy(doc)
    doc["prompt"]["6"]["inputs"]["text"] = text
    return doc


SAVED_HAS = "t => (localStorage.getItem('steerflow.autosave') || '').includes(t)"
TEXT_IS = "t => window.steerflow.getDocument().prompt['6'].inputs.text === t"
REQUEUED = re.compile(r"re-queued prompt #\d+|running prompt #\d+ again")


def _prompt_text(page) -> str:
    return page.evaluate("() => window.steerflow.getDocument().prompt['6'].inputs.text")


def test_each_tab_reloads_its_own_graph(page, server: LiveServer):
    """Reloading tab A brought back tab B's graph: every tab wrote one autosave."""
    a = Canvas(page)
    a.open_file("tabA.json", _with_text(small_txt2img(), "TAB A: my work"))
    a.wait_saved(7, "tabA")
    page.wait_for_function(SAVED_HAS, arg="TAB A")

    tab_b = page.context.new_page()
    tab_b.goto(server.url + "/")
    tab_b.wait_for_selector(".sf-dot.on")
    b = Canvas(tab_b)
    # a new tab opens the most recently saved graph, as before
    expect(b.nodes()).to_have_count(7)
    assert _prompt_text(tab_b) == "TAB A: my work"
    b.open_file("tabB.json", _with_text(small_txt2img(), "TAB B: other work"))
    tab_b.wait_for_function(SAVED_HAS, arg="TAB B")

    page.reload()
    page.wait_for_selector(".sf-dot.on")
    expect(a.nodes()).to_have_count(7)
    page.wait_for_function("() => window.steerflow.getDocument().prompt['6']")
    assert _prompt_text(page) == "TAB A: my work"
    expect(page.locator(".sf-docname")).to_have_text("tabA")

    tab_b.reload()
    tab_b.wait_for_selector(".sf-dot.on")
    expect(b.nodes()).to_have_count(7)
    tab_b.wait_for_function("() => window.steerflow.getDocument().prompt['6']")
    assert _prompt_text(tab_b) == "TAB B: other work"

    # tab B closed: its graph is still reachable from tab A's History tab
    tab_b.close()
    page.get_by_role("tab", name="History").click()
    others = page.get_by_test_id("other-tabs")
    expect(others).to_be_visible()
    others.locator("summary").click()
    others.get_by_role("button", name="Open").first.click()
    page.wait_for_function(TEXT_IS, arg="TAB B: other work")


def test_an_edit_made_just_before_a_reload_is_kept(page, server: LiveServer):
    """The autosave is written 200 ms after an edit settles: a reload (or a closed tab) inside
    that time wrote nothing, and the edit was lost. The tab writes it as the page goes."""
    c = Canvas(page)
    c.open_file("quick.json", _with_text(small_txt2img(), "quick edit"))
    c.wait_saved(7, "quick")
    page.wait_for_function(SAVED_HAS, arg="quick edit")
    c.set_value("3", "seed", "987654")
    page.reload()
    page.wait_for_selector(".sf-dot.on")
    expect(c.widget("3", "seed")).to_have_value("987654")


def test_a_full_storage_is_told_and_the_tab_keeps_its_graph(page, server: LiveServer):
    c = Canvas(page)
    c.open_file("full.json", _with_text(small_txt2img(), "kept"))
    c.wait_saved(7, "full")
    # the browser's storage refuses every write from now on
    # (each refused write counted, so the test knows when the next edit's save was tried)
    page.evaluate("""() => { window.__refused = 0; Storage.prototype.setItem = function () {
        window.__refused++;
        const e = new Error('quota'); e.name = 'QuotaExceededError'; throw e; }; }""")
    c.set_value("6", "text", "edited while full")
    expect(c.toasts().filter(has_text="Autosave failed")).to_have_count(1)
    refused = page.evaluate("() => window.__refused")
    c.set_value("6", "text", "edited again")
    page.wait_for_function("n => window.__refused > n", arg=refused)
    page.wait_for_timeout(300)  # a toast it would show comes with the refusal
    # told once, not per edit
    expect(c.toasts().filter(has_text="Autosave failed")).to_have_count(1)


def test_toasts_close_and_go_with_their_workflow(page, server: LiveServer):
    c = Canvas(page)
    doc = small_txt2img()
    doc["prompt"]["4"]["inputs"]["ckpt_name"] = MISSING_CKPT
    c.open_file("missing.json", doc)
    warn = c.toasts().filter(has_text="names is missing")
    expect(warn).to_have_count(1)
    warn.get_by_role("button", name="Dismiss").click()
    expect(warn).to_have_count(0)

    c.open_file("missing2.json", doc)
    expect(warn).to_have_count(1)
    c.queue()  # refused: the model is missing
    expect(c.toasts().filter(has_text="Prompt rejected")).to_have_count(1)
    c.open_file("fine.json", small_txt2img())
    expect(c.toasts().filter(has_text="Prompt rejected")).to_have_count(0)
    expect(c.toasts().filter(has_text="Opened fine.json")).to_have_count(1)
    expect(c.toasts().filter(has_text="names is missing")).to_have_count(0)


def test_small_window_side_panel_collapses_and_no_minimap(page, server: LiveServer):
    c = Canvas(page)
    c.open_file("small.json", small_txt2img())
    page.set_viewport_size({"width": 800, "height": 600})
    page.wait_for_timeout(300)
    expect(page.locator(".sf-minimap")).to_be_hidden()
    side = page.get_by_test_id("side-panel")
    assert side.bounding_box()["width"] <= 241
    before = page.locator(".react-flow").bounding_box()["width"]
    page.get_by_role("button", name="Hide side panel").click()
    expect(page.get_by_role("tab", name="Queue")).to_have_count(0)
    after = page.locator(".react-flow").bounding_box()["width"]
    assert after >= 760 and after > before + 200, (before, after)
    page.reload()  # the choice is remembered
    page.wait_for_selector(".sf-dot.on")
    expect(page.get_by_role("button", name="Show side panel")).to_be_visible()
    page.get_by_role("button", name="Show side panel").click()
    expect(page.get_by_role("tab", name="Queue")).to_be_visible()
    page.set_viewport_size({"width": 1280, "height": 800})
    expect(page.locator(".sf-minimap")).to_be_visible()


def test_an_int_primitive_linked_to_a_seed_takes_its_value_and_control(page, server: LiveServer):
    c = Canvas(page)
    c.open_file("seed.json", small_txt2img())
    expect(c.widget("3", "seed")).to_have_value("42")
    prim = c.add_node("PrimitiveInt", 60, 620)
    expect(c.widget(prim, "value")).to_have_value("0")
    links = c.edges().count()
    c.connect(prim, 0, "3", "seed")
    expect(c.edges()).to_have_count(links + 1)
    expect(c.widget(prim, "value")).to_have_value("42")
    control = c.node(prim).get_by_label("value control after generate")
    expect(control).to_have_value("fixed")  # the seed's own mode
    doc = c.document()
    assert doc["prompt"][prim]["inputs"]["value"] == 42
    # randomize moves the primitive's value after a queue, within the seed's range
    control.select_option("randomize")
    c.queue()
    expect(c.widget(prim, "value")).not_to_have_value("42", timeout=15_000)
    assert int(c.widget(prim, "value").input_value()) >= 0


# --- the server goes away and comes back -------------------------------------------------------

class _OwnServer:
    """A server this test may kill -9 and start again on the same port and base dir."""

    def __init__(self, base: Path):
        self.base = base
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.live = LiveServer(self.url, base, base / "server.log")

    def start(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.setdefault("OMP_NUM_THREADS", "1")
        with (self.base / "server.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "steerflow.cli", "serve", "--host", "127.0.0.1",
                 "--port", str(self.port), "--base-dir", str(self.base)],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.live.log_tail()
            try:
                if "KSampler" in self.live.get("/object_info"):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the server did not start:\n{self.live.log_tail()}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def own_server(chromium: str, tmp_path: Path) -> Iterator[_OwnServer]:
    from nodes.diffusion.tiny import save_tiny_model

    save_tiny_model(tmp_path / "models" / "checkpoints")
    s = _OwnServer(tmp_path)
    s.start()
    try:
        yield s
    finally:
        if s.proc and s.proc.poll() is None:
            s.proc.terminate()
            try:
                s.proc.wait(10)
            except subprocess.TimeoutExpired:
                s.kill()


def test_a_lost_server_is_shown_and_its_requeued_prompt_said_so(browser_context,
                                                                own_server: _OwnServer):
    page = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    page.goto(own_server.url + "/")
    page.wait_for_selector(".sf-dot.on")
    c = Canvas(page)
    c.open_file("long.json", small_txt2img(steps=5000))  # stopped before it ends
    expect(c.nodes()).to_have_count(7)
    c.queue()
    sample = c.node("3").locator(".sf-node")
    expect(sample).to_have_attribute("data-status", "executing", timeout=60_000)
    own_server.kill()

    banner = page.get_by_test_id("offline-banner")
    expect(banner).to_be_visible(timeout=30_000)
    expect(banner).to_contain_text("re-run")
    expect(page.get_by_test_id("connection-lost")).to_contain_text("connection lost")
    expect(sample).to_have_attribute("data-status", "")  # no running frame
    glob = page.evaluate("() => window.steerflow.store.getGlobal()")
    assert glob["running"] is False and glob["startedAt"] is None and glob["lostPrompt"]
    expect(page.get_by_test_id("queue-unknown")).to_have_count(1)  # the item: unknown, no clock
    expect(page.get_by_test_id("elapsed")).to_have_count(0)

    own_server.start()
    expect(banner).to_be_hidden(timeout=30_000)
    note = c.toasts().filter(has_text=REQUEUED)
    expect(note).to_have_count(1, timeout=60_000)  # (a restarted server under load)
    stop = note.get_by_role("button", name=re.compile("Cancel|Interrupt"))
    expect(stop).to_be_visible()
    stop.click()
    # the re-run prompt goes away: the queue empties
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        q = own_server.live.get("/queue")
        if not q["queue_running"] and not q["queue_pending"]:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the re-queued prompt still runs: {q}")


TRAIN_STEPS = """([prompt, from, to]) => {
    const s = window.steerflow.store;
    s.claimPrompt(prompt);  // queued from this graph: drawn on its nodes
    s.enqueue({type: 'execution_start', data: {prompt_id: prompt}});
    s.enqueue({type: 'executing', data: {node: '21', prompt_id: prompt}});
    for (let i = from; i <= to; i++) {
        s.enqueue({type: 'progress', data: {node: '21', value: i, max: 300, loss: 1 / i}});
    }
    s.flush();
}"""


def test_train_lora_curve_is_near_the_top_and_survives_a_resume(page, server: LiveServer):
    """The events a training sends (played into the run store: no real training needed)."""
    c = Canvas(page)
    c.open_example("train_lora.json")
    expect(c.node("21")).to_be_visible()
    page.evaluate(TRAIN_STEPS, ["a", 1, 85])
    curve = c.node("21").locator(".sf-loss")
    expect(curve.get_by_role("img")).to_have_attribute("aria-label", "loss curve, steps 1 to 85")
    node_box = c.node("21").bounding_box()
    box = curve.bounding_box()
    # near the node's top (under its outputs), not under its twenty-odd widget rows
    assert box["y"] - node_box["y"] < 160, (box, node_box)
    expect(curve).to_be_in_viewport()
    page.evaluate("() => window.steerflow.store.enqueue({type: 'execution_interrupted', data: {}})")
    page.evaluate(TRAIN_STEPS, ["b", 86, 120])  # Queue again: resumed from its checkpoint
    expect(curve.get_by_role("img")).to_have_attribute("aria-label", "loss curve, steps 1 to 120")
    expect(curve).to_contain_text("resumed at 86")
