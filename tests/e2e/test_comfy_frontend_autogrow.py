"""Growing inputs (ComfyUI's Autogrow) in ComfyUI's own front end, served by Steerflow.

``steerflow serve --front-end comfyui`` (the pinned comfyui-frontend-package) in a
subprocess, headless Debian chromium. Our ``/object_info`` declares each growing list
once, as ComfyUI's backend does (``["COMFY_AUTOGROW_V3", {"template": ...}]``,
engine/autogrow.py), so the front end draws the first slots and adds one each time the
last is linked, up to the maximum; before, it drew all 50 of Batch Images. The front end
(1.58.1) starts with ``min + 1`` slots: Batch Images (min 2) shows image0..image2.
The prompt it then builds (``images.image0``, ...) runs on our server. Steerflow's own
canvas reads the same entry (web/src/lib/schema.ts): the required slots, then one free
socket past the last linked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.canvas import Canvas
from tests.e2e.conftest import LiveServer, chromium_page
from tests.e2e.test_comfy_frontend import comfy_frontend_server

pytestmark = pytest.mark.slow

SETTLE_MS = 50
SETTLE = f"() => new Promise(r => requestAnimationFrame(() => setTimeout(r, {SETTLE_MS})))"


@pytest.fixture(scope="module")
def comfy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with comfy_frontend_server(tmp_path_factory.mktemp("steerflow-comfy-autogrow"),
                               ready="BatchImagesNode") as live:
        live.post("/api/settings", {"Comfy.TutorialCompleted": True})
        yield live


def inputs(page: Any, node: str) -> list[list[str]]:
    """A node's input sockets as ``[name, type, shown name]``."""
    return page.evaluate(f"""() => window.__nodes[{json.dumps(node)}].inputs.map(
        i => [i.name, String(i.type), i.label || i.localized_name || i.name])""")


def link(page: Any, source: str, target: str, slot: str) -> None:
    """Link ``source``'s first output to ``target``'s input named ``slot``."""
    page.evaluate("""([s, t, name]) => { const n = window.__nodes;
        const slot = n[t].inputs.findIndex(i => i.name === name);
        if (slot < 0) throw new Error('no input ' + name);
        n[s].connect(0, n[t], slot); }""", [source, target, slot])
    page.evaluate(SETTLE)


def test_autogrow_inputs_grow_in_comfyuis_frontend(comfy_server: LiveServer) -> None:
    page_errors: list[str] = []
    with chromium_page() as page:
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        page.goto(comfy_server.url + "/")
        page.wait_for_function("() => window.app?.graph?._nodes?.length > 0", timeout=120_000)
        page.wait_for_timeout(1000)  # start-up graph still settling
        page.evaluate("""() => { const g = window.app.graph; g.clear(); window.__nodes = {};
            for (const [key, type] of [['batch', 'BatchImagesNode'], ['math',
                    'ComfyMathExpression'], ['list', 'CreateList'], ['red', 'EmptyImage'],
                    ['blue', 'EmptyImage'], ['preview', 'PreviewImage'],
                    ['int', 'PrimitiveInt']]) {
                const node = window.LiteGraph.createNode(type);
                g.add(node); window.__nodes[key] = node;
            } }""")
        page.evaluate(SETTLE)

        # Batch Images: min 2, so image0, image1 and a free image2, not 50 sockets
        assert inputs(page, "batch") == [
            [f"images.image{k}", "IMAGE", f"image{k}"] for k in range(3)]
        assert page.evaluate("() => window.__nodes.batch.size[1]") < 200
        link(page, "red", "batch", "images.image0")  # not the last slot: no new one
        assert len(inputs(page, "batch")) == 3
        link(page, "blue", "batch", "images.image2")  # the last: one more
        assert [i[0] for i in inputs(page, "batch")] == [
            f"images.image{k}" for k in range(4)]
        # up to ComfyUI's (and our) maximum, 50: each last slot linked (as ``link`` does, in
        # one call) until no new one comes
        page.evaluate("""async (settle) => { const n = window.__nodes;
            for (let k = 3; k < 60 && k < n.batch.inputs.length; k++) {
                const slot = n.batch.inputs.findIndex(i => i.name === 'images.image' + k);
                if (slot < 0) throw new Error('no input images.image' + k);
                n.blue.connect(0, n.batch, slot);
                await new Promise(r => requestAnimationFrame(() => setTimeout(r, settle)));
            } }""", SETTLE_MS)
        assert len(inputs(page, "batch")) == 50

        # Math Expression: named slots a..z, a and b at first, c once b is linked
        assert [i[:2] for i in inputs(page, "math") if i[0].startswith("values.")] == [
            ["values.a", "FLOAT,INT,BOOLEAN"], ["values.b", "FLOAT,INT,BOOLEAN"]]
        link(page, "int", "math", "values.b")
        assert [i[0] for i in inputs(page, "math") if i[0].startswith("values.")] == [
            "values.a", "values.b", "values.c"]
        # Create List: min 1, so input0 and a free input1
        assert [i[:2] for i in inputs(page, "list")] == [
            ["inputs.input0", "*"], ["inputs.input1", "*"]]

        # the prompt the front end builds runs here: two images into one batch
        # (unlinked first: the front end shrinks a group a frame after an unlink, which
        # fails on a node already removed from the graph)
        page.evaluate("""() => { for (const node of Object.values(window.__nodes))
            for (let i = node.inputs.length - 1; i >= 0; i--)
                if (node.inputs[i].link != null) node.disconnectInput(i); }""")
        page.evaluate(SETTLE)
        assert len(inputs(page, "batch")) == 3  # shrunk back to min + 1
        page.evaluate("""() => { const n = window.__nodes, g = window.app.graph;
            for (const k of ['math', 'list', 'int']) g.remove(n[k]);
            const b = n.batch;
            for (const [k, w, c] of [['red', 64, 0xff0000], ['blue', 32, 0x0000ff]]) {
                n[k].widgets.find(x => x.name === 'width').value = w;
                n[k].widgets.find(x => x.name === 'height').value = w;
                n[k].widgets.find(x => x.name === 'color').value = c;
            }
            b.connect(0, n.preview, 0); }""")
        page.evaluate(SETTLE)
        link(page, "red", "batch", "images.image0")
        link(page, "blue", "batch", "images.image1")
        prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
        batch = next(v for v in prompt.values() if v["class_type"] == "BatchImagesNode")
        assert sorted(batch["inputs"]) == ["images.image0", "images.image1"]
        queued = page.evaluate("async () => await window.app.api.queuePrompt(0, "
                               "await window.app.graphToPrompt())")
        entry = comfy_server.wait_history(queued["prompt_id"], timeout=120)
        assert entry["status"]["status_str"] == "success", entry["status"]
        images = next(o["images"] for o in entry["outputs"].values() if o.get("images"))
        assert len(images) == 2

        # a saved workflow with four slots linked loads with those links and one free slot
        page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }",
                      saved_workflow(4))
        page.evaluate(SETTLE)
        loaded = page.evaluate("""() => window.app.graph._nodes.find(
            n => n.type === 'BatchImagesNode').inputs.map(i => [i.name, i.link])""")
        assert loaded == [[f"images.image{k}", k + 1] for k in range(4)] + [
            ["images.image4", None]]
        assert not page_errors, page_errors


def saved_workflow(linked: int) -> dict[str, Any]:
    """A UI workflow as ComfyUI's front end saves it: Empty Image into ``linked`` slots of
    Batch Images."""
    node = {"flags": {}, "order": 0, "mode": 0, "properties": {}, "size": [300, 100]}
    links = [[k + 1, 1, 0, 2, k, "IMAGE"] for k in range(linked)]
    return {
        "last_node_id": 2, "last_link_id": linked, "groups": [], "config": {}, "extra": {},
        "version": 0.4, "links": links,
        "nodes": [
            {**node, "id": 1, "type": "EmptyImage", "pos": [0, 0], "inputs": [],
             "outputs": [{"name": "IMAGE", "type": "IMAGE",
                          "links": [k + 1 for k in range(linked)]}],
             "widgets_values": [8, 8, 1, 0]},
            {**node, "id": 2, "type": "BatchImagesNode", "pos": [400, 0],
             "inputs": [{"name": f"images.image{k}", "type": "IMAGE", "link": k + 1}
                        for k in range(linked)],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}],
             "widgets_values": []},
        ],
    }


def test_steerflow_canvas_grows_batch_images(page: Any, server: LiveServer) -> None:
    from playwright.sync_api import expect

    c = Canvas(page)
    c.open_file("grow.json", {
        "format": "steerflow.workflow", "version": 1, "extra": {},
        "prompt": {"1": {"class_type": "EmptyImage", "inputs": {}},
                   "2": {"class_type": "BatchImagesNode", "inputs": {}}},
        "layout": {"nodes": {"1": {"pos": [0, 0]}, "2": {"pos": [500, 0]}}, "groups": []}})
    sockets = c.node("2").locator('.react-flow__handle[data-handleid^="i:images."]')
    expect(sockets).to_have_count(2)
    expect(c.node("2").locator('.sf-input[data-input="images.image0"]')).to_contain_text(
        "image0")
    c.connect("1", 0, "2", "images.image1")
    expect(sockets).to_have_count(3)
    assert c.document()["prompt"]["2"]["inputs"] == {"images.image1": ["1", 0]}
