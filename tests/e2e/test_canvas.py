"""The canvas in a real browser against a real server (see conftest.py)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from playwright.sync_api import expect

from tests.e2e.canvas import Canvas
from tests.e2e.conftest import REPO, LiveServer

ERROR = re.compile(r"\bsf-error\b")
TXT2IMG = json.loads((REPO / "workflows" / "txt2img.json").read_text())


def small_txt2img(steps: int = 2) -> dict:
    doc = copy.deepcopy(TXT2IMG)
    for node in doc["prompt"].values():
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = steps
            if steps >= 1000:  # a long run: more steps than the model's noise levels need
                node["inputs"]["scheduler"] = "karras"  # a σ schedule (refused on "normal")
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
    return doc


def test_build_txt2img_by_hand_and_run_it(page, server: LiveServer):
    c = Canvas(page)
    ckpt = c.add_node("Load Checkpoint", 40, 60)
    pos = c.add_node("Encode Prompt", 340, 20)
    neg = c.add_node("Encode Prompt", 340, 260)
    latent = c.add_node("Empty Latent Image", 340, 500)
    sampler = c.add_node("Sample", 660, 20)
    decode = c.add_node("VAE Decode", 660, 460)
    save = c.add_node("Save Image", 980, 460)

    expect(c.widget(ckpt, "ckpt_name")).to_have_value("steerflow-shapes")
    c.connect(ckpt, 1, pos, "clip")
    c.connect(ckpt, 1, neg, "clip")
    c.connect(ckpt, 0, sampler, "model")
    c.connect(pos, 0, sampler, "positive")
    c.connect(neg, 0, sampler, "negative")
    c.connect(latent, 0, sampler, "latent_image")
    c.connect(sampler, 0, decode, "samples")
    c.connect(ckpt, 2, decode, "vae")
    c.connect(ckpt, 2, latent, "vae")  # the default model's VAE downscales 4x, not 8x
    c.connect(decode, 0, save, "images")
    expect(c.edges()).to_have_count(10)

    c.set_value(pos, "text", "a red circle on white")
    # added after the checkpoint: at its native size (64x64), not ComfyUI's 512
    expect(c.widget(latent, "width")).to_have_value("64")
    expect(c.widget(latent, "height")).to_have_value("64")
    c.set_value(sampler, "steps", "3")
    c.set_value(sampler, "seed", "1234")
    c.node(sampler).get_by_label("seed control after generate").select_option("fixed")

    prompt = c.document()["prompt"]
    assert prompt[sampler]["inputs"]["model"] == [ckpt, 0]
    assert prompt[sampler]["inputs"]["steps"] == 3
    assert prompt[latent]["inputs"] == {"width": 64, "height": 64, "batch_size": 1,
                                        "vae": [ckpt, 2]}

    c.queue()
    image = c.node(save).locator("img.sf-output-image")
    expect(image).to_be_visible(timeout=180_000)
    page.wait_for_function("img => img.complete && img.naturalWidth === 64",
                           arg=image.element_handle())
    # the run finished: no node is still marked as executing, and the seed stayed fixed
    expect(page.locator(".sf-node.sf-executing")).to_have_count(0)
    expect(c.widget(sampler, "seed")).to_have_value("1234")
    # the image is in the gallery, and in the history with the prompt that made it
    page.get_by_role("tab", name="Gallery").click()
    expect(page.locator(".sf-gallery img")).to_have_count(1)
    page.get_by_role("tab", name="History").click()
    expect(page.locator(".sf-history-item").first).to_contain_text("success")


def test_invalid_link_is_refused_with_reason(page):
    c = Canvas(page)
    ckpt = c.add_node("Load Checkpoint", 40, 60)
    sampler = c.add_node("Sample", 420, 40)
    c.connect(ckpt, 1, sampler, "model")  # CLIP into MODEL
    expect(c.toasts().filter(has_text="Link refused")).to_contain_text("type mismatch")
    expect(c.edges()).to_have_count(0)
    c.connect(ckpt, 0, sampler, "model")  # MODEL into MODEL
    expect(c.edges()).to_have_count(1)
    # one link per input: a second valid link replaces the first
    c.connect(ckpt, 0, sampler, "model")
    expect(c.edges()).to_have_count(1)


def test_link_dropped_on_empty_space_offers_matching_nodes(page):
    c = Canvas(page)
    ckpt = c.add_node("Load Checkpoint", 40, 60)
    box = c.pane_box()
    handle = c.out_handle(ckpt, 2).bounding_box()  # VAE
    page.mouse.move(handle["x"] + 4, handle["y"] + 4)
    page.mouse.down()
    page.mouse.move(box["x"] + 700, box["y"] + 300, steps=10)
    page.mouse.up()
    dialog = page.get_by_role("dialog", name="Add node")
    expect(dialog).to_contain_text("type VAE")
    names = dialog.locator(".sf-palette-item").evaluate_all("els => els.map(e => e.dataset.type)")
    assert "VAEDecode" in names and "EmptyLatentImage" in names
    assert "KSampler" not in names and "CLIPTextEncode" not in names
    dialog.get_by_label("Search nodes").fill("decode")
    page.keyboard.press("Enter")
    expect(c.nodes()).to_have_count(2)
    expect(c.edges()).to_have_count(1)
    (new,) = set(c.node_ids()) - {ckpt}
    assert c.document()["prompt"][new]["inputs"]["vae"] == [ckpt, 2]


def test_validation_and_execution_errors_land_on_their_nodes(page):
    c = Canvas(page)
    # A Save Image with nothing linked: the server's validator refuses the prompt.
    c.open_file("broken.json", {
        "format": "steerflow.workflow", "version": 1,
        "prompt": {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}},
        "layout": {"nodes": {"1": {"pos": [0, 0]}}, "groups": []}, "extra": {},
    })
    expect(c.nodes()).to_have_count(1)
    c.queue()
    row = c.node("1").locator('.sf-input[data-input="images"]')
    expect(row).to_have_class(re.compile(r"\bsf-has-issue\b"))
    expect(row).to_contain_text("missing")
    expect(c.toasts().filter(has_text="Prompt rejected")).to_be_visible()

    # 5 % 0 fails while running: the error shows on the IntMath node, not its neighbours.
    c.open_file("modulo.json", {
        "1": {"class_type": "PrimitiveInt", "inputs": {"value": 5}},
        "2": {"class_type": "IntMath", "inputs": {"a": ["1", 0], "b": 0, "op": "modulo"}},
        "3": {"class_type": "ShowValue", "inputs": {"value": ["2", 0]}},
    })
    expect(c.nodes()).to_have_count(3)
    c.queue()
    expect(c.node("2").locator(".sf-node")).to_have_class(ERROR, timeout=60_000)
    expect(c.node("2")).to_contain_text("modulo by zero")
    expect(c.node("1").locator(".sf-node")).not_to_have_class(ERROR)
    expect(c.node("3").locator(".sf-node")).not_to_have_class(ERROR)
    expect(page.get_by_test_id("status")).to_contain_text("modulo by zero")


def test_dropping_a_steerflow_png_restores_its_workflow(page, server: LiveServer):
    doc = small_txt2img()
    doc["prompt"]["6"]["inputs"]["text"] = "restored from a PNG"
    res = server.post("/prompt", {"prompt": doc["prompt"], "client_id": "e2e",
                                  "extra_data": {"extra_pnginfo": {"workflow": doc}}})
    entry = server.wait_history(res["prompt_id"])
    (img,) = [i for out in entry["outputs"].values() for i in out.get("images", [])]
    png = server.get_bytes(f"/view?filename={img['filename']}&subfolder={img['subfolder']}"
                           f"&type={img['type']}")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    c = Canvas(page)
    c.add_node("Save Image", 100, 100)  # something to be replaced
    c.drop_file(img["filename"], png, "image/png")
    expect(c.nodes()).to_have_count(len(doc["prompt"]))
    assert sorted(c.node_ids()) == sorted(doc["prompt"])
    expect(c.widget("6", "text")).to_have_value("restored from a PNG")
    expect(c.node("6")).to_contain_text("Positive Prompt")
    links = [v for node in doc["prompt"].values() for v in node["inputs"].values()
             if isinstance(v, list)]
    expect(c.edges()).to_have_count(len(links))
    restored = c.document()["prompt"]
    for node_id, node in doc["prompt"].items():
        # every saved input comes back as saved; inputs a node gained since the file was
        # written (e.g. Load Checkpoint's weight_dtype) get their defaults
        assert restored[node_id]["inputs"].items() >= node["inputs"].items()


def test_reload_keeps_the_graph(page):
    c = Canvas(page)
    a, _show = c.int_shown("42")
    before = c.document()
    # the autosave is debounced: wait until it holds this very graph
    page.wait_for_function(
        """p => { const d = JSON.parse(localStorage.getItem('steerflow.autosave') || '{}');
                  return JSON.stringify(d.prompt) === JSON.stringify(p); }""", arg=before["prompt"])
    page.reload()
    page.wait_for_selector(".sf-toolbar")
    expect(c.nodes()).to_have_count(2)
    expect(c.edges()).to_have_count(1)
    expect(c.widget(a, "value")).to_have_value("42")
    after = c.document()
    assert after["prompt"] == before["prompt"]
    assert after["layout"]["nodes"] == before["layout"]["nodes"]


def test_undo_redo_copy_paste_delete(page):
    c = Canvas(page)
    a = c.add_node("Int", 60, 60)
    c.wait_saved(1)
    c.node(a).locator(".sf-header").click()
    page.keyboard.press("Control+c")
    box = c.pane_box()
    page.mouse.move(box["x"] + 500, box["y"] + 300)
    page.keyboard.press("Control+v")
    expect(c.nodes()).to_have_count(2)
    c.wait_saved(2)
    page.keyboard.press("Control+z")
    expect(c.nodes()).to_have_count(1)
    c.wait_saved(1)
    page.keyboard.press("Control+Shift+z")
    expect(c.nodes()).to_have_count(2)
    c.wait_saved(2)
    # select both (Ctrl+A) and delete them
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    expect(c.nodes()).to_have_count(0)
    c.wait_saved(0)
    page.keyboard.press("Control+z")
    expect(c.nodes()).to_have_count(2)


def test_open_comfyui_workflow_and_run_it(page):
    c = Canvas(page)
    wf = {
        "last_node_id": 9, "last_link_id": 9,
        "nodes": [
            {"id": 4, "type": "CheckpointLoaderSimple", "pos": [26, 474], "size": [315, 98],
             "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]},
                         {"name": "CLIP", "type": "CLIP", "links": [3, 5]},
                         {"name": "VAE", "type": "VAE", "links": [8]}],
             "widgets_values": ["steerflow-tiny"]},
            {"id": 5, "type": "EmptyLatentImage", "pos": [473, 609], "size": [315, 106],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": [2]}],
             "widgets_values": [64, 64, 1]},
            {"id": 6, "type": "CLIPTextEncode", "pos": [415, 186], "size": [422, 164],
             "inputs": [{"name": "clip", "type": "CLIP", "link": 5}],
             "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [4]}],
             "widgets_values": ["a blue square"]},
            {"id": 7, "type": "CLIPTextEncode", "pos": [413, 389], "size": [425, 180],
             "inputs": [{"name": "clip", "type": "CLIP", "link": 3}],
             "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [6]}],
             "widgets_values": [""]},
            {"id": 3, "type": "KSampler", "pos": [863, 186], "size": [315, 262],
             "inputs": [{"name": "model", "type": "MODEL", "link": 1},
                        {"name": "positive", "type": "CONDITIONING", "link": 4},
                        {"name": "negative", "type": "CONDITIONING", "link": 6},
                        {"name": "latent_image", "type": "LATENT", "link": 2}],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": [7]}],
             "widgets_values": [7, "randomize", 2, 7.5, "euler", "normal", 1]},
            {"id": 8, "type": "VAEDecode", "pos": [1209, 188], "size": [210, 46],
             "inputs": [{"name": "samples", "type": "LATENT", "link": 7},
                        {"name": "vae", "type": "VAE", "link": 8}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [9]}]},
            {"id": 9, "type": "SaveImage", "pos": [1451, 189], "size": [210, 58],
             "inputs": [{"name": "images", "type": "IMAGE", "link": 9}],
             "widgets_values": ["ComfyUI"]},
        ],
        "links": [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 7, 0, "CLIP"],
                  [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 6, 0, "CLIP"],
                  [6, 7, 0, 3, 2, "CONDITIONING"], [7, 3, 0, 8, 0, "LATENT"],
                  [8, 4, 2, 8, 1, "VAE"], [9, 8, 0, 9, 0, "IMAGE"]],
        "groups": [], "config": {}, "extra": {}, "version": 0.4,
    }
    c.open_file("comfy.json", wf)
    expect(c.nodes()).to_have_count(7)
    expect(c.edges()).to_have_count(9)
    expect(c.widget("3", "seed")).to_have_value("7")
    expect(c.widget("3", "steps")).to_have_value("2")
    expect(c.node("3").get_by_label("seed control after generate")).to_have_value("randomize")
    c.queue()
    expect(c.node("9").locator("img.sf-output-image")).to_be_visible(timeout=180_000)
    # randomize-after-queue gave the seed a new value
    expect(c.widget("3", "seed")).not_to_have_value("7")


def test_examples_menu_opens_the_servers_workflows(page):
    c = Canvas(page)
    c.open_example("txt2img.json")
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    expect(c.node("6")).to_contain_text("Positive Prompt")


def test_queue_panel_progress_preview_cancel_and_interrupt(page, server: LiveServer):
    c = Canvas(page)
    c.open_file("long.json", small_txt2img(steps=5000))
    expect(c.nodes()).to_have_count(len(TXT2IMG["prompt"]))
    try:
        c.queue()
        sampler = c.node("3").locator(".sf-node")
        # the running sampler is highlighted, with its progress bar and the live preview
        expect(sampler).to_have_class(re.compile(r"\bsf-executing\b"), timeout=120_000)
        expect(sampler.locator(".sf-progress")).to_be_visible()
        expect(sampler.locator("img.sf-preview")).to_be_visible()
        expect(page.locator(".sf-live img")).to_be_visible()
        c.queue()  # a second prompt waits behind the first
        queue = page.get_by_role("list", name="queue")
        expect(queue.locator(".sf-queue-item")).to_have_count(2)
        pending = queue.locator(".sf-queue-item:not(.running)")
        pending.get_by_role("button", name="Cancel").click()
        expect(queue.locator(".sf-queue-item")).to_have_count(1)
        queue.locator(".sf-queue-item.running").get_by_role("button", name="Interrupt").click()
        expect(sampler).not_to_have_class(re.compile(r"\bsf-executing\b"), timeout=60_000)
        expect(queue.locator(".sf-queue-item")).to_have_count(0)
        expect(page.get_by_test_id("status")).to_contain_text("interrupted")
        page.get_by_role("tab", name="History").click()
        expect(page.locator(".sf-history-item").first).to_contain_text("interrupted")
    finally:
        server.stop_all()


def test_image_upload_widget(page, tmp_path):
    from PIL import Image

    path = tmp_path / "upload-me.png"
    Image.new("RGB", (24, 16), (10, 200, 30)).save(path)
    c = Canvas(page)
    node = c.add_node("Load Image", 60, 60)
    with page.expect_file_chooser() as fc:
        c.node(node).get_by_role("button", name="Upload").click()
    fc.value.set_files(str(path))
    expect(c.widget(node, "image")).to_have_value("upload-me.png")
    preview = c.node(node).locator("img.sf-upload-preview")
    expect(preview).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth === 24",
                           arg=preview.element_handle())
    # the refreshed schema lists the uploaded file among the choices
    expect(c.widget(node, "image").locator("option", has_text="upload-me.png")).to_have_count(1)
    expect(c.widget(node, "image").locator("option", has_text="missing")).to_have_count(0)
    # another picture of the same name never replaces the first (ComfyUI's front end sends
    # no overwrite either): it is stored beside it; the same picture again is the same file
    Image.new("RGB", (24, 16), (200, 10, 30)).save(path)
    with page.expect_file_chooser() as fc:
        c.node(node).get_by_role("button", name="Upload").click()
    fc.value.set_files(str(path))
    expect(c.widget(node, "image")).to_have_value("upload-me (1).png")
    Image.new("RGB", (24, 16), (10, 200, 30)).save(path)
    with page.expect_file_chooser() as fc:
        c.node(node).get_by_role("button", name="Upload").click()
    fc.value.set_files(str(path))
    expect(c.widget(node, "image")).to_have_value("upload-me.png")


def test_export_downloads_the_document(page):
    """Export downloads the document (what Save did before Save went to the server's
    workflow library, as ComfyUI's Save does: tests/e2e/test_canvas_library.py)."""
    c = Canvas(page)
    a = c.add_node("Int", 60, 60)
    show = c.add_node("Show Value", 420, 60)
    c.connect(a, 0, show, "value")
    c.set_value(a, "value", "7")
    with page.expect_download() as dl:
        page.get_by_role("button", name="Export", exact=True).click()
    saved = json.loads(Path(dl.value.path()).read_text())
    assert dl.value.suggested_filename == "workflow.json"
    assert saved["format"] == "steerflow.workflow" and saved["version"] == 1
    assert saved["prompt"][a] == {"class_type": "PrimitiveInt", "inputs": {"value": 7},
                                  "_meta": {"title": "Int"}}
    assert saved["prompt"][show]["inputs"] == {"value": [a, 0]}
    assert set(saved["layout"]["nodes"]) == {a, show}
    assert {"x", "y", "zoom"} <= set(saved["layout"]["viewport"])


def test_first_visit_opens_the_default_graph(browser_context, server):
    page = browser_context.new_page()
    page.goto(server.url + "/")
    page.wait_for_function("() => document.querySelectorAll('.react-flow__node').length === 7")
    doc = page.evaluate("() => window.steerflow.getDocument()")
    types = sorted(node["class_type"] for node in doc["prompt"].values())
    assert types == sorted(["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode",
                            "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage"])
    page.close()


def test_an_image_without_a_workflow_dropped_on_the_canvas_gets_a_load_image(page):
    """As in ComfyUI (and as a pasted image here): a picture with no workflow dropped on
    empty canvas becomes a Load Image node holding it (it was only a toast)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 40, 40)).save(buf, "PNG")
    c = Canvas(page)
    expect(c.nodes()).to_have_count(0)
    c.drop_file("plain_drop.png", buf.getvalue(), "image/png")
    expect(c.nodes()).to_have_count(1)
    (node,) = c.node_ids()
    expect(c.node(node)).to_contain_text("Load Image")
    expect(c.widget(node, "image")).to_have_value(re.compile(r"plain_drop.*\.png"))


def test_the_node_search_has_no_sideways_scrollbar(page):
    """Long node names made the Add node list scroll sideways (the first-time walk)."""
    c = Canvas(page)
    box = c.pane_box()
    page.mouse.dblclick(box["x"] + 200, box["y"] + 200)
    dialog = page.get_by_role("dialog", name="Add node")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("option").first).to_be_visible()
    listbox = dialog.get_by_role("listbox")
    assert listbox.evaluate("e => e.scrollWidth <= e.clientWidth"), listbox.evaluate(
        "e => [e.scrollWidth, e.clientWidth]")
    page.keyboard.press("Escape")
