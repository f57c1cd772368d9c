"""The workflow library: Save (Ctrl+S) keeps the workflow on the server, under
``workflows/`` of ComfyUI's per-user file API, and the Workflows tab opens, renames and
deletes what is there, as ComfyUI's workflow sidebar does (a newcomer could only download
a file and upload it again)."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request

from playwright.sync_api import expect

from tests.e2e.canvas import Canvas
from tests.e2e.conftest import LiveServer
from tests.e2e.test_canvas import small_txt2img

LISTING = "/userdata?dir=workflows&recurse=true&split=false&full_info=true"  # ComfyUI's own


def _file(name: str) -> str:
    return "/userdata/" + urllib.parse.quote(f"workflows/{name}", safe="")


def _put(server: LiveServer, name: str, body: object) -> None:
    req = urllib.request.Request(server.url + _file(name), data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


def _rename_doc(page, old: str, new: str) -> None:
    page.get_by_role("button", name=f"workflow name: {old}, rename").click()
    page.get_by_label("workflow name").fill(new)
    page.get_by_label("workflow name").press("Enter")
    expect(page.locator(".sf-docname")).to_have_text(new)


def _seed(page) -> object:
    doc = page.evaluate("() => window.steerflow.getDocument()")
    return doc["prompt"]["3"]["inputs"]["seed"]


def test_save_change_open_rename_delete(page, server: LiveServer):
    c = Canvas(page)
    c.open_file("walk.json", small_txt2img())
    expect(c.nodes()).to_have_count(7)
    # 1. name the graph and save it (the toolbar's Save: into the library)
    _rename_doc(page, "walk", "library walk")
    c.set_value("3", "seed", "1234")
    page.locator(".sf-toolbar").get_by_role("button", name="Save", exact=True).click()
    saved_toast = c.toasts().filter(has_text="Saved library walk.json to the Workflows library")
    expect(saved_toast).to_have_count(1)
    saved = server.get(_file("library walk.json"))
    assert isinstance(saved["nodes"], list) and "format" not in saved  # ComfyUI's UI format
    # 2. change it
    c.set_value("3", "seed", "99")
    c.node("9").locator(".sf-header").click()
    page.keyboard.press("Delete")
    expect(c.nodes()).to_have_count(6)
    # 3. open the saved one from the Workflows tab: the graph as saved, the changed one kept
    page.get_by_role("tab", name="Workflows").click()
    tab = page.get_by_role("tabpanel", name="Workflows")
    item = tab.locator('.sf-library-item[data-path="library walk.json"]')
    expect(item).to_be_visible()
    item.get_by_role("button", name="Open library walk", exact=True).click()
    expect(c.toasts().filter(has_text="Opened library walk (7 nodes)")).to_have_count(1)
    expect(c.nodes()).to_have_count(7)
    assert _seed(page) == 1234
    expect(page.locator(".sf-docname")).to_have_text("library walk")
    kept = page.evaluate("""() => Object.keys(localStorage)
        .filter(k => k.startsWith('steerflow.replaced.'))
        .map(k => JSON.parse(localStorage.getItem(k)))""")
    assert any(k["name"] == "library walk" and '"seed":99' in k["doc"] for k in kept), kept
    expect(item).to_have_class(re.compile(r"\bsf-current\b"))
    # Ctrl+S saves over the workflow it was opened from without asking
    c.set_value("3", "seed", "77")
    page.keyboard.press("Control+s")
    expect(c.toasts().filter(has_text="Saved library walk.json")).to_have_count(1)
    expect(page.get_by_role("alertdialog")).to_have_count(0)
    # a reload keeps which library file the tab's graph is (its next Save asks nothing either)
    page.reload()
    page.wait_for_function("() => window.steerflow?.ready")
    expect(c.nodes()).to_have_count(7)
    c.set_value("3", "seed", "78")
    c.set_value("3", "seed", "77")
    page.keyboard.press("Control+s")
    expect(c.toasts().filter(has_text="Saved library walk.json")).to_have_count(1)
    expect(page.get_by_role("alertdialog")).to_have_count(0)
    page.get_by_role("tab", name="Workflows").click()
    # 4. rename it: the open workflow follows its file
    item.get_by_role("button", name="Rename library walk", exact=True).click()
    field = tab.get_by_label("new name for library walk")
    field.fill("bad/name")
    field.press("Enter")
    refused = c.toasts().filter(has_text="Not renamed: a workflow name cannot hold “/”")
    expect(refused).to_have_count(1)
    item.get_by_role("button", name="Rename library walk", exact=True).click()
    tab.get_by_label("new name for library walk").fill("library walk 2")
    tab.get_by_label("new name for library walk").press("Enter")
    renamed = tab.locator('.sf-library-item[data-path="library walk 2.json"]')
    expect(renamed).to_be_visible()
    expect(item).to_have_count(0)
    expect(page.locator(".sf-docname")).to_have_text("library walk 2")
    kept_doc = server.get(_file("library walk 2.json"))["extra"]["steerflow"]["document"]
    assert kept_doc["prompt"]["3"]["inputs"]["seed"] == 77
    # 5. delete it, after a question; the graph on the canvas stays
    renamed.get_by_role("button", name="Delete library walk 2", exact=True).click()
    dialog = page.get_by_role("alertdialog", name="Delete library walk 2?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(renamed).to_be_visible()
    renamed.get_by_role("button", name="Delete library walk 2", exact=True).click()
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(renamed).to_have_count(0)
    expect(c.nodes()).to_have_count(7)
    paths = [e["path"] for e in server.get(LISTING)]
    assert "library walk 2.json" not in paths and "library walk.json" not in paths


def test_saving_over_another_workflow_asks_first(page, server: LiveServer):
    _put(server, "taken.json", {"nodes": [], "links": [], "extra": {}, "version": 0.4})
    c = Canvas(page)
    c.open_file("mine.json", small_txt2img())
    _rename_doc(page, "mine", "taken")
    page.keyboard.press("Control+s")
    dialog = page.get_by_role("alertdialog", name="Replace taken.json?")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Cancel").click()
    assert server.get(_file("taken.json"))["nodes"] == []  # kept
    page.keyboard.press("Control+s")
    dialog.get_by_role("button", name="Replace", exact=True).click()
    expect(c.toasts().filter(has_text="Saved taken.json")).to_have_count(1)
    assert len(server.get(_file("taken.json"))["nodes"]) == 7


def test_a_save_the_server_refuses_says_why_and_keeps_the_graph(page, server: LiveServer):
    c = Canvas(page)
    c.open_file("refused.json", small_txt2img())
    page.route("**/userdata/**", lambda route: route.fulfill(
        status=413, content_type="application/json",
        body=json.dumps({"error": {"type": "too_large", "message": "the body exceeds 32 MiB"}})))
    page.keyboard.press("Control+s")
    expect(c.toasts().filter(has_text=(
        "Cannot save refused.json to the library: the workflow is too large for the server: "
        "the body exceeds 32 MiB. Your graph is still on the canvas"))).to_have_count(1)
    page.unroute("**/userdata/**")
    page.route("**/userdata/**", lambda route: route.abort())
    page.keyboard.press("Control+s")
    expect(c.toasts().filter(has_text="the server cannot be reached")).to_have_count(1)
    page.unroute("**/userdata/**")
    expect(c.nodes()).to_have_count(7)


def test_comfyuis_listing_reads_what_the_canvas_saved_and_its_files_open_here(
        page, server: LiveServer):
    """Saved from our canvas, listed the way ComfyUI's front end lists its workflow sidebar
    (ComfyUI's UI format in the file); a UI-format file in a subfolder, as ComfyUI's Save
    writes it, opens in our canvas from the Workflows tab."""
    c = Canvas(page)
    c.open_file("shared.json", small_txt2img())
    _rename_doc(page, "shared", "shared with comfy")
    page.keyboard.press("Control+s")
    expect(c.toasts().filter(has_text="Saved shared with comfy.json")).to_have_count(1)
    listed = {e["path"]: e for e in server.get(LISTING)}
    entry = listed["shared with comfy.json"]
    assert entry["size"] > 0 and entry["modified"] > 0
    ui = server.get(_file("shared with comfy.json"))
    assert ui["version"] == 0.4 and ui["links"] and ui["last_node_id"] == 9
    assert {n["type"] for n in ui["nodes"]} >= {"KSampler", "CheckpointLoaderSimple", "SaveImage"}
    # ComfyUI's reading of it is the graph saved (the server converts it as ComfyUI's files)
    ours = page.evaluate("() => window.steerflow.getDocument()")["prompt"]
    converted = server.post("/workflow/convert", ui)["document"]["prompt"]
    assert {k: v["inputs"] for k, v in converted.items()} == {
        k: v["inputs"] for k, v in ours.items()}
    # a file ComfyUI's front end saved (no document of ours inside), in a subfolder
    comfy = dict(ui)
    comfy["extra"] = {"ds": {"scale": 1, "offset": [0, 0]}}
    for node in comfy["nodes"]:
        if node["type"] == "KSampler":
            node["widgets_values"][0] = 4321
    _put(server, "from comfy/edited.json", comfy)
    page.get_by_role("tab", name="Workflows").click()
    tab = page.get_by_role("tabpanel", name="Workflows")
    tab.get_by_role("button", name="Refresh").click()
    item = tab.locator('.sf-library-item[data-path="from comfy/edited.json"]')
    expect(item).to_contain_text("from comfy/edited")
    item.get_by_role("button", name="Open from comfy/edited", exact=True).click()
    expect(c.toasts().filter(has_text="Opened edited (7 nodes, from ComfyUI)")).to_have_count(1)
    assert _seed(page) == 4321
    # a file the canvas saved and ComfyUI's front end then changed opens as changed
    changed = json.loads(json.dumps(ui))
    for node in changed["nodes"]:
        if node["type"] == "KSampler":
            node["widgets_values"][0] = 555
    _put(server, "shared with comfy.json", changed)
    page.get_by_role("tab", name="Workflows").click()
    tab.get_by_role("button", name="Refresh").click()
    tab.locator('.sf-library-item[data-path="shared with comfy.json"]').get_by_role(
        "button", name="Open shared with comfy", exact=True).click()
    opened = c.toasts().filter(has_text="Opened shared with comfy (7 nodes, from ComfyUI)")
    expect(opened).to_have_count(1)
    assert _seed(page) == 555


def _saved_seed(server: LiveServer, name: str) -> object:
    document = server.get(_file(name))["extra"]["steerflow"]["document"]
    return document["prompt"]["3"]["inputs"]["seed"]


def _paths(server: LiveServer) -> set[str]:
    return {e["path"] for e in server.get(LISTING)}


def test_a_workflow_in_a_folder_saves_in_place_and_a_new_name_renames_its_file(
        page, server: LiveServer):
    """Ctrl+S on proj/sub.json wrote a new top-level sub.json (and offered to replace an
    unrelated one there); a new name typed in the toolbar saved a copy and left the old file.
    As in ComfyUI: Save writes the file the graph came from, a rename renames that file."""
    c = Canvas(page)
    c.open_file("sub.json", small_txt2img())
    c.set_value("3", "seed", "9999")
    page.keyboard.press("Control+s")  # a top-level sub.json, unrelated to proj/sub.json
    expect(c.toasts().filter(has_text="Saved sub.json")).to_have_count(1)
    ui = server.get(_file("sub.json"))
    _put(server, "proj/sub.json", ui)
    _put(server, "proj/taken.json", {"nodes": [], "links": [], "extra": {}, "version": 0.4})
    page.get_by_role("tab", name="Workflows").click()
    tab = page.get_by_role("tabpanel", name="Workflows")
    tab.get_by_role("button", name="Refresh").click()
    item = tab.locator('.sf-library-item[data-path="proj/sub.json"]')
    item.get_by_role("button", name="Open proj/sub", exact=True).click()
    expect(item).to_have_class(re.compile(r"\bsf-current\b"))
    c.set_value("3", "seed", "4545")
    page.keyboard.press("Control+s")
    expect(c.toasts().filter(has_text="Saved proj/sub.json to the Workflows library")
           ).to_have_count(1)
    expect(page.get_by_role("alertdialog")).to_have_count(0)
    assert _saved_seed(server, "proj/sub.json") == 4545
    assert _saved_seed(server, "sub.json") == 9999  # the other sub.json untouched
    # a new name (the toolbar's) renames the file, in its folder
    _rename_doc(page, "sub", "sub2")
    c.set_value("3", "seed", "46")
    page.keyboard.press("Control+s")
    expect(c.toasts().filter(
        has_text="Saved proj/sub2.json to the Workflows library (renamed from proj/sub.json")
    ).to_have_count(1)
    paths = _paths(server)
    assert "proj/sub2.json" in paths and "proj/sub.json" not in paths, paths
    assert "sub2.json" not in paths, paths
    assert _saved_seed(server, "proj/sub2.json") == 46
    expect(tab.locator('.sf-library-item[data-path="proj/sub2.json"]')).to_have_class(
        re.compile(r"\bsf-current\b"))
    # a name that is taken asks first; Cancel keeps both files as they are, Replace renames over it
    _rename_doc(page, "sub2", "taken")
    page.keyboard.press("Control+s")
    dialog = page.get_by_role("alertdialog", name="Replace proj/taken.json?")
    dialog.get_by_role("button", name="Cancel").click()
    assert server.get(_file("proj/taken.json"))["nodes"] == []
    assert "proj/sub2.json" in _paths(server)
    page.keyboard.press("Control+s")
    dialog.get_by_role("button", name="Replace", exact=True).click()
    expect(c.toasts().filter(has_text="Saved proj/taken.json")).to_have_count(1)
    paths = _paths(server)
    assert "proj/sub2.json" not in paths and _saved_seed(server, "proj/taken.json") == 46, paths


def test_undoing_an_open_brings_back_the_file_of_the_graph_before(page, server: LiveServer):
    """After Ctrl+Z undid an Open, the tab still marked the opened file "open" and Save asked
    to replace the file the graph had come from."""
    c = Canvas(page)
    c.open_file("alpha.json", small_txt2img())
    page.keyboard.press("Control+s")
    expect(c.toasts().filter(has_text="Saved alpha.json")).to_have_count(1)
    _put(server, "beta.json", server.get(_file("alpha.json")))
    page.get_by_role("tab", name="Workflows").click()
    tab = page.get_by_role("tabpanel", name="Workflows")
    tab.get_by_role("button", name="Refresh").click()
    alpha = tab.locator('.sf-library-item[data-path="alpha.json"]')
    beta = tab.locator('.sf-library-item[data-path="beta.json"]')
    current = re.compile(r"\bsf-current\b")
    expect(alpha).to_have_class(current)
    c.set_value("3", "seed", "333")  # not saved
    beta.get_by_role("button", name="Open beta", exact=True).click()
    expect(beta).to_have_class(current)
    page.locator(".react-flow__pane").click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+z")
    expect(page.locator(".sf-docname")).to_have_text("alpha")
    expect(alpha).to_have_class(current)
    expect(beta).not_to_have_class(current)
    page.keyboard.press("Control+s")
    # polled: the first save's toast may still be showing, so it proves nothing
    _wait_saved_seed(page, server, "alpha.json", 333)
    expect(page.get_by_role("alertdialog")).to_have_count(0)
    page.keyboard.press("Control+Shift+z")  # redo: beta again
    expect(page.locator(".sf-docname")).to_have_text("beta")
    expect(beta).to_have_class(current)
    expect(alpha).not_to_have_class(current)


SAVE_KEY = """(el) => el.dispatchEvent(new KeyboardEvent('keydown',
    {key: 's', code: 'KeyS', ctrlKey: true, bubbles: true, cancelable: true}))"""


def test_ctrl_s_in_the_tabs_fields_saves_the_workflow(page, server: LiveServer):
    """Ctrl+S in the Filter or Rename field was neither handled nor prevented: the browser's
    Save page dialog opened."""
    c = Canvas(page)
    c.open_file("keys.json", small_txt2img())
    page.keyboard.press("Control+s")
    expect(c.toasts().filter(has_text="Saved keys.json")).to_have_count(1)
    page.get_by_role("tab", name="Workflows").click()
    tab = page.get_by_role("tabpanel", name="Workflows")
    field = tab.get_by_label("filter workflows")
    field.fill("key")
    c.set_value("3", "seed", "5150")
    assert field.evaluate(SAVE_KEY) is False  # prevented
    _wait_saved_seed(page, server, "keys.json", 5150)
    # in the Rename field: the rename typed is made, then the workflow saved (under its new name)
    c.set_value("3", "seed", "5151")
    tab.locator('.sf-library-item[data-path="keys.json"]').get_by_role(
        "button", name="Rename keys", exact=True).click()
    rename = tab.get_by_label("new name for keys")
    rename.fill("keys 2")
    assert rename.evaluate(SAVE_KEY) is False
    renamed = tab.locator('.sf-library-item[data-path="keys 2.json"]')
    expect(renamed).to_have_class(re.compile(r"\bsf-current\b"))
    expect(page.locator(".sf-docname")).to_have_text("keys 2")
    _wait_saved_seed(page, server, "keys 2.json", 5151)
    assert "keys.json" not in _paths(server)


def _wait_saved_seed(page, server: LiveServer, name: str, seed: int) -> None:
    for _ in range(150):  # up to 15 s: a loaded CI machine
        try:
            if _saved_seed(server, name) == seed:
                return
        except Exception:  # not there yet
            pass
        page.wait_for_timeout(100)
    assert _saved_seed(server, name) == seed


def test_a_large_workflow_opens_and_a_file_that_is_not_json_says_so(page, server: LiveServer):
    """A valid workflow with one ~9 MB string (embedded base64) said "a workflow must be a
    JSON object" (the exact-integer parser's regex overflowed); a file that is not JSON said
    the same."""
    c = Canvas(page)
    c.open_file("big.json", small_txt2img())
    page.keyboard.press("Control+s")
    expect(c.toasts().filter(has_text="Saved big.json")).to_have_count(1)
    ui = server.get(_file("big.json"))
    ui["extra"]["blob"] = "QUJD" * 2_300_000  # 9.2 MB
    ui["extra"]["steerflow"]["document"]["prompt"]["3"]["inputs"]["seed"] = 18446744073709551615
    _put(server, "big.json", ui)
    req = urllib.request.Request(server.url + _file("notjson.json"), data=b"this is { not json",
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
    page.get_by_role("tab", name="Workflows").click()
    tab = page.get_by_role("tabpanel", name="Workflows")
    tab.get_by_role("button", name="Refresh").click()
    tab.get_by_role("button", name="Open notjson", exact=True).click()
    expect(c.toasts().filter(
        has_text="Cannot open notjson from the library: not valid JSON:")).to_have_count(1)
    expect(c.toasts().filter(has_text="must be a JSON object")).to_have_count(0)
    tab.get_by_role("button", name="Open big", exact=True).click()
    expect(c.toasts().filter(has_text="Opened big (7 nodes")).to_have_count(1)
    assert str(_seed(page)) == "18446744073709551615"  # exact


def test_the_first_save_of_a_graph_never_named_asks_its_name(page, server: LiveServer):
    """The walk: a graph built from scratch was saved as workflow.json without a word (and
    the next unnamed graph over it); ComfyUI asks "Save workflow as"."""
    c = Canvas(page)
    c.clear()
    c.add_node("Int", 60, 60)
    c.wait_saved(1)
    page.keyboard.press("Control+s")
    dialog = page.get_by_role("alertdialog", name="Save workflow as")
    field = dialog.get_by_label("Workflow name")
    expect(field).to_have_value("workflow")
    page.keyboard.press("Escape")  # cancelled: nothing written
    expect(dialog).to_have_count(0)
    listing = server.get(LISTING)
    assert not any(e["path"] == "workflow.json" for e in listing), listing
    page.keyboard.press("Control+s")
    field.fill("from scratch")
    field.press("Enter")
    expect(c.toasts().filter(has_text="Saved from scratch.json")).to_have_count(1)
    expect(page.locator(".sf-docname")).to_have_text("from scratch")
    assert server.get(_file("from scratch.json"))["nodes"]
    page.keyboard.press("Control+s")  # its file now: saved over without a question
    expect(c.toasts().filter(has_text="Saved from scratch.json")).to_have_count(1)
    expect(dialog).to_have_count(0)
