"""The workflow library shared with ComfyUI's own front end: a workflow saved by our
canvas's Save opens from ComfyUI's workflow sidebar, and ComfyUI's save of it (changed
there) opens in our canvas's Workflows tab as changed. The file travels between the two
servers (ours and one serving ComfyUI's app) through ``/userdata``, byte for byte."""

from __future__ import annotations

import urllib.parse
import urllib.request
from pathlib import Path

from playwright.sync_api import expect

from tests.e2e.canvas import Canvas
from tests.e2e.conftest import LiveServer, chromium_page
from tests.e2e.test_canvas import small_txt2img
from tests.e2e.test_comfy_frontend import comfy_frontend_server

NAME = "round trip"
FILE = urllib.parse.quote(f"workflows/{NAME}.json", safe="")
KSAMPLER = "window.app.graph._nodes.find(n => n.type === 'KSampler')"


def _copy(source: LiveServer, dest: LiveServer, prefix: str = "") -> bytes:
    data = source.get_bytes(f"{prefix}/userdata/{FILE}")
    req = urllib.request.Request(f"{dest.url}/userdata/{FILE}", data=data, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
    return data


def test_our_save_opens_in_comfyuis_sidebar_and_its_save_opens_here(
        page, server: LiveServer, tmp_path: Path):
    c = Canvas(page)
    c.open_file(f"{NAME}.json", small_txt2img())
    c.set_value("3", "seed", "4242")
    page.keyboard.press("Control+s")
    expect(c.toasts().filter(has_text=f"Saved {NAME}.json")).to_have_count(1)
    ours = page.evaluate("() => window.steerflow.getDocument()")["prompt"]
    with comfy_frontend_server(tmp_path) as comfy:
        comfy.post("/api/settings", {"Comfy.TutorialCompleted": True})
        _copy(server, comfy)
        with chromium_page() as app:
            errors: list[str] = []
            app.on("pageerror", lambda e: errors.append(str(e)))
            app.goto(comfy.url + "/")
            app.wait_for_function("() => window.app?.graph?._nodes?.length > 0",
                                  timeout=120_000)
            # ComfyUI's workflow sidebar (W) lists it; a click opens it
            app.keyboard.press("w")
            app.get_by_text(NAME, exact=True).click()
            app.wait_for_function(f"""() => window.app.extensionManager.workflow.activeWorkflow
                ?.path === 'workflows/{NAME}.json'""", timeout=30_000)
            app.wait_for_function(f"() => {KSAMPLER}?.widgets[0].value === 4242")
            types = app.evaluate("() => window.app.graph._nodes.map(n => n.type)")
            assert sorted(types) == sorted(n["class_type"] for n in ours.values())
            # changed there and saved by ComfyUI's own Save
            app.evaluate(f"""() => {{ {KSAMPLER}.widgets[0].value = 777;
                const store = window.app.extensionManager.workflow;
                store.activeWorkflow.changeTracker.checkState(); }}""")
            app.evaluate("() => window.app.extensionManager.command.execute('Comfy.SaveWorkflow')")
            app.wait_for_timeout(500)
            saved = comfy.get(f"/userdata/{FILE}")
            assert [n["widgets_values"][0] for n in saved["nodes"] if n["type"] == "KSampler"] \
                == [777]
            assert not errors, errors
        _copy(comfy, server)
    # ComfyUI kept our document in the file, but its graph changed: the graph opens as changed
    page.get_by_role("tab", name="Workflows").click()
    tab = page.get_by_role("tabpanel", name="Workflows")
    tab.get_by_role("button", name="Refresh").click()
    tab.get_by_role("button", name=f"Open {NAME}", exact=True).click()
    expect(c.toasts().filter(has_text=f"Opened {NAME} (7 nodes, from ComfyUI)")).to_have_count(1)
    doc = page.evaluate("() => window.steerflow.getDocument()")
    assert doc["prompt"]["3"]["inputs"]["seed"] == 777
