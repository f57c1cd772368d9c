"""ComfyUI's official frontend (the pinned comfyui-frontend-package) on a Steerflow server.

``steerflow serve --front-end comfyui`` in a subprocess; headless chromium loads
the app, which builds its default graph from our ``/object_info`` (in 1.58.1 that is
Z-Image Turbo's, whose ModelSamplingAuraFlow and EmptySD3LatentImage Steerflow lacks).
The app then loads ComfyUI's classic default graph (Load Checkpoint → CLIP Text Encode
x2 → KSampler → VAE Decode → Save Image, 512x512, 20 steps; the default of the
front ends before) with our default model ``steerflow-shapes``, as a user dropping a
workflow does; pressing Run sends per-node progress (``progress_state``) and previews
with their node, shows the image in the Save Image node, and the prompt lands in
``/history``. Load Image has its upload button. No request the app makes to this server
at start may fail, apart from those listed in ``ALLOWED_MISSING``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.comfy_workflow import UNPACKED_SUBGRAPHS
from tests.e2e.conftest import REPO, LiveServer, _free_port, chromium_page, chromium_path

pytestmark = pytest.mark.slow

# ComfyUI answers 404 here too: the user has no custom templates file.
ALLOWED_MISSING = ("/api/userdata/comfy.templates.json",)
# Uncaught errors of the front end itself that are no answer of ours (none known).
ALLOWED_PAGE_ERRORS: tuple[str, ...] = ()
# The classic default graph's node types (our txt2img example has the same).
CLASSIC_GRAPH = {"CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler",
                 "VAEDecode", "SaveImage"}


def classic_default_graph(ckpt: str) -> dict[str, Any]:
    """ComfyUI's default graph as its front end 1.27.10 built it, for ``ckpt``."""
    def node(nid: int, kind: str, inputs: list[tuple[str, str, int]],
             outputs: list[tuple[str, list[int]]], widgets: list[Any] | None) -> dict[str, Any]:
        out = {"id": nid, "type": kind, "pos": [250 * len(inputs), 120 * nid],
               "size": [315, 100], "flags": {}, "order": 0, "mode": 0, "properties": {},
               "inputs": [{"name": n, "type": t, "link": lk} for n, t, lk in inputs],
               "outputs": [{"name": t, "type": t, "links": lks, "slot_index": i}
                           for i, (t, lks) in enumerate(outputs)]}
        return out if widgets is None else {**out, "widgets_values": widgets}

    nodes = [
        node(4, "CheckpointLoaderSimple", [],
             [("MODEL", [1]), ("CLIP", [3, 5]), ("VAE", [8])], [ckpt]),
        node(5, "EmptyLatentImage", [], [("LATENT", [2])], [512, 512, 1]),
        node(6, "CLIPTextEncode", [("clip", "CLIP", 3)], [("CONDITIONING", [4])],
             ["beautiful scenery nature glass bottle landscape, , purple galaxy bottle,"]),
        node(7, "CLIPTextEncode", [("clip", "CLIP", 5)], [("CONDITIONING", [6])],
             ["text, watermark"]),
        node(3, "KSampler", [("model", "MODEL", 1), ("positive", "CONDITIONING", 4),
                             ("negative", "CONDITIONING", 6), ("latent_image", "LATENT", 2)],
             [("LATENT", [7])], [156680208700286, "randomize", 20, 8, "euler", "normal", 1]),
        node(8, "VAEDecode", [("samples", "LATENT", 7), ("vae", "VAE", 8)],
             [("IMAGE", [9])], None),
        node(9, "SaveImage", [("images", "IMAGE", 9)], [], ["ComfyUI"]),
    ]
    links = [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"],
             [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"],
             [6, 7, 0, 3, 2, "CONDITIONING"], [7, 3, 0, 8, 0, "LATENT"], [8, 4, 2, 8, 1, "VAE"],
             [9, 8, 0, 9, 0, "IMAGE"]]
    return {"last_node_id": 9, "last_link_id": 9, "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def load_classic_graph(page: Any) -> None:
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }",
                  classic_default_graph("steerflow-shapes"))
    page.wait_for_function("""() => window.app.graph._nodes.some(
        n => n.type === 'CheckpointLoaderSimple')""", timeout=30_000)


@contextlib.contextmanager
def comfy_frontend_server(base: Path, ready: str = "CheckpointLoaderSimple",
                          extra: tuple[str, ...] = ()) -> Iterator[LiveServer]:
    """Steerflow serving ComfyUI's front end from ``base``, once ``/object_info`` lists
    ``ready``; skips where chromium, Playwright or the front end package are missing."""
    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="Python Playwright is not installed")
    if importlib.util.find_spec("comfyui_frontend_package") is None:
        pytest.skip("pip install 'steerflow[comfyui-frontend]' (comfyui-frontend-package)")
    port = _free_port()
    log = base / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "steerflow.cli", "serve", "--front-end", "comfyui",
             "--host", "127.0.0.1", "--port", str(port), "--base-dir", str(base), *extra],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    live = LiveServer(f"http://127.0.0.1:{port}", base, log)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode}):\n{live.log_tail()}")
            try:
                if ready in live.get(f"/object_info/{ready}"):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer in time:\n{live.log_tail()}")
            time.sleep(0.3)
        yield live
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def comfy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with comfy_frontend_server(tmp_path_factory.mktemp("steerflow-comfy-frontend")) as live:
        yield live


@dataclass
class ComfyApp:
    """ComfyUI's app as a first visit opened it: one page for this module's tests (its
    start-up, seconds of JavaScript, is paid once)."""
    page: Any
    page_errors: list[str]
    failed: list[str]  # requests to our server that failed, from the start on
    views: list[str]  # images fetched from /api/view
    first: list[dict[str, Any]]  # the graph the first visit opened
    failed_at_start: list[str]
    offered: Any  # localStorage's steerflow.defaultGraphOffered after the first visit
    tabs: list[str]  # the paths of the workflows open after the first visit
    active_tab: Any  # the active one's path
    reloaded: list[str]  # the node types a reload right after the first visit shows


@pytest.fixture(scope="module")
def shared_app(comfy_server: LiveServer) -> Iterator[ComfyApp]:
    # A first visit opens the template browser over an empty graph (as on ComfyUI);
    # a returning user, whose settings say so, gets the default graph.
    comfy_server.post("/api/settings", {"Comfy.TutorialCompleted": True})
    origin = comfy_server.url
    failed: list[str] = []
    page_errors: list[str] = []
    views: list[str] = []

    def on_response(response: Any) -> None:
        path = response.url[len(origin):] if response.url.startswith(origin) else None
        if path is None:
            return  # the app also asks api.comfy.org for release notes: offline here
        if path.startswith("/api/view?") and response.status == 200:
            views.append(path)
        if response.status >= 400 and path.split("?")[0] not in ALLOWED_MISSING:
            failed.append(f"{response.status} {response.request.method} {path}")

    with chromium_page() as page:
        page.on("response", on_response)
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        page.goto(origin + "/")
        try:
            page.wait_for_function("() => window.app?.graph?._nodes?.length > 0",
                                   timeout=120_000)
        except Exception:
            raise AssertionError(f"no graph; failed requests {failed}, page errors "
                                 f"{page_errors}") from None
        # The app's own default graph (Z-Image Turbo's) needs nodes Steerflow lacks: on a
        # first visit Steerflow's extension opens its txt2img example on the built-in model
        page.wait_for_function("""() => window.app.graph._nodes.some(
            n => n.type === 'CheckpointLoaderSimple')""", timeout=60_000)
        page.wait_for_timeout(1500)  # start-up requests still in flight
        first = page.evaluate("""() => window.app.graph._nodes.map(n => ({type: n.type,
            widgets: Object.fromEntries((n.widgets || []).map(w => [w.name, w.value]))}))""")
        page.wait_for_function(
            "() => localStorage.getItem('steerflow.defaultGraphOffered')", timeout=30_000)
        offered = page.evaluate("() => localStorage.getItem('steerflow.defaultGraphOffered')")
        tabs = page.evaluate(
            "() => window.app.extensionManager.workflow.openWorkflows.map(w => w.path)")
        active_tab = page.evaluate(
            "() => window.app.extensionManager.workflow.activeWorkflow?.path")
        # a reload before any edit restores the example, not the app's own graph (the
        # app saves a tab's draft on a change; the example's load announced none)
        page.reload()
        page.wait_for_function("() => window.app?.graph?._nodes?.length > 0",
                               timeout=120_000)
        page.wait_for_timeout(1500)
        reloaded = page.evaluate("() => window.app.graph._nodes.map(n => n.type)")
        yield ComfyApp(page, page_errors, failed, views, first, list(failed), offered, tabs,
                       active_tab, reloaded)


@pytest.fixture
def app(shared_app: ComfyApp) -> tuple[Any, list[str]]:
    """The shared app page with an empty graph, and the page errors of this test only."""
    page, page_errors = shared_app.page, shared_app.page_errors
    page_errors.clear()
    page.evaluate("() => window.app.graph.clear()")
    page.wait_for_function("() => window.app.graph._nodes.length === 0")
    return page, page_errors


def test_comfyui_frontend_builds_the_default_graph_and_queues(
        comfy_server: LiveServer, shared_app: ComfyApp) -> None:
    first, failed, page_errors = shared_app.first, shared_app.failed, shared_app.page_errors
    assert {n["type"] for n in first} == CLASSIC_GRAPH, first
    assert next(n for n in first if n["type"] == "CheckpointLoaderSimple")[
        "widgets"]["ckpt_name"] == "steerflow-shapes"
    assert not shared_app.failed_at_start, \
        f"requests failed at start: {shared_app.failed_at_start}"
    # once per browser: a reload keeps what the user has (the app restores it), the
    # example too when nothing was edited
    assert shared_app.offered
    assert set(shared_app.reloaded) == CLASSIC_GRAPH, shared_app.reloaded
    # the example replaced the app's default graph in its tab: no second tab is left
    # holding the Z-Image graph, whose nodes Steerflow lacks
    assert shared_app.tabs == [shared_app.active_tab], shared_app.tabs

    page = shared_app.page
    load_classic_graph(page)
    nodes = page.evaluate("""() => window.app.graph._nodes.map(n => ({
        type: n.type,
        widgets: Object.fromEntries((n.widgets || []).map(w => [w.name, w.value])),
        options: Object.fromEntries((n.widgets || []).map(
            w => [w.name, w.options?.values ?? null]))}))""")
    assert {n["type"] for n in nodes} == CLASSIC_GRAPH
    ckpts = comfy_server.get("/object_info/CheckpointLoaderSimple")[
        "CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    loader = next(n for n in nodes if n["type"] == "CheckpointLoaderSimple")
    # the combo lists our models, from our /object_info
    assert loader["widgets"]["ckpt_name"] == "steerflow-shapes" and \
        loader["options"]["ckpt_name"] == ckpts and "steerflow-shapes" in ckpts

    # every node of our /object_info is accepted and registered by the front end
    # (a schema it rejects, say a private key or a V3 input it cannot parse, drops
    # the node from its library without a word)
    ours = set(comfy_server.get("/object_info"))
    registered = set(page.evaluate(
        "() => Object.keys(window.LiteGraph.registered_node_types)"))
    assert ours <= registered, sorted(ours - registered)[:20]
    # ... and each one can be created, its widgets built
    broken = page.evaluate("""(types) => types.flatMap(t => {
        try { return window.LiteGraph.createNode(t) ? [] : [t + ': null']; }
        catch (e) { return [t + ': ' + e]; } })""", sorted(ours))
    assert not broken, broken[:20]
    # Load Image gets the upload button and preview (``image_upload``)
    assert page.evaluate("""() => (window.LiteGraph.createNode('LoadImage').widgets
        || []).some(w => w.name === 'upload')""")
    # the About panel names the server (the frontend's own badge says "ComfyUI <version>")
    assert page.evaluate("""() => window.app.extensions.find(
        e => e.name === 'steerflow.about')?.aboutPageBadges?.[0]?.label""").startswith(
        "Steerflow ")
    # what the error dialog's report and the Logs panel read
    assert isinstance(page.evaluate("() => window.app.api.getLogs()"), str)
    page.evaluate("""() => { window.__seen = new Set();
        for (const t of ['progress_state', 'b_preview_with_metadata'])
            window.app.api.addEventListener(t, () => window.__seen.add(t)); }""")

    # the classic graph's 512x512 at 20 steps takes minutes on the 64x64 model: a user
    # sets a smaller size in its widgets
    page.evaluate("""() => {
        for (const n of window.app.graph._nodes) for (const w of n.widgets || []) {
            if (n.type === 'EmptyLatentImage' && ['width', 'height'].includes(w.name))
                w.value = 128;
            if (n.type === 'KSampler' && w.name === 'steps') w.value = 8;
        } }""")
    started = time.monotonic()
    shared_app.views.clear()  # those of this run
    page.get_by_test_id("queue-button").click()
    page.wait_for_function("""() => {
        const save = window.app.graph._nodes.find(n => n.type === 'SaveImage');
        return save?.imgs?.length > 0 && save.imgs[0].complete
            && save.imgs[0].naturalWidth > 0;
    }""", timeout=300_000)
    elapsed = time.monotonic() - started
    size = page.evaluate("""() => {
        const img = window.app.graph._nodes.find(n => n.type === 'SaveImage').imgs[0];
        return [img.naturalWidth, img.naturalHeight];
    }""")
    print(f"default graph queued to image shown: {elapsed:.1f}s, image {size}")
    # the size the graph asks for, though the built-in model's VAE is 4x and Empty
    # Latent Image sized its latent for SD's 8x (the sampler refits an empty latent)
    assert size == [128, 128], size
    assert shared_app.views, "the image was never fetched from /view"
    # our run-time warnings reach its toasts, through Steerflow's own extension: an
    # empty latent sized for an 8x VAE decoded as it is by the 4x one
    client = page.evaluate("() => window.app.api.clientId")
    warned = comfy_server.post("/prompt", {"client_id": client, "prompt": {
        "4": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "steerflow-shapes"}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}}})["prompt_id"]
    toast = page.get_by_test_id("toast").filter(has_text="Warning from")
    toast.first.wait_for(timeout=60_000)
    assert "Empty Latent Image" in toast.first.inner_text()
    # the running node outlined with its progress bar, and previews on it
    seen = set(page.evaluate("() => [...window.__seen]"))
    assert seen == {"progress_state", "b_preview_with_metadata"}, seen
    assert not failed, f"requests failed: {failed}"
    unexpected = [e for e in page_errors
                  if not any(a in e for a in ALLOWED_PAGE_ERRORS)]
    assert not unexpected, f"uncaught errors in the page: {unexpected}"

    # the warning comes while that prompt runs: its history entry is written after it ends
    comfy_server.wait_history(warned)
    history = comfy_server.get("/history")
    assert len(history) == 2  # the classic graph, then the warning's small one
    entry = next(e for e in history.values() if "3" in e["prompt"][2])  # with its KSampler
    assert entry["status"]["status_str"] == "success"
    images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    assert images and images[0]["type"] == "output"
    saved = Path(comfy_server.base_dir, "output", images[0]["subfolder"], images[0]["filename"])
    assert saved.is_file()


def test_our_converter_unpacks_subgraphs_as_the_frontend_queues_them(
        comfy_server: LiveServer, app: tuple[Any, list[str]]) -> None:
    """The real front end turns KSampler + VAE Decode of the classic default graph into a subgraph
    ("Convert to Subgraph"), then that and the two prompts into another (nested). At each
    stage its own ``graphToPrompt`` (what it queues) and our converter fed the workflow it
    saves give the same prompt, ids ``"<instance>:<inner>"`` included; the nested one
    runs."""
    page, _ = app
    load_classic_graph(page)
    stages = page.evaluate("""async () => {
        const g = window.app.graph;
        for (const n of g._nodes) {  // small and quick on this CPU
            const w = Object.fromEntries((n.widgets || []).map(w => [w.name, w]));
            if (n.type === 'EmptyLatentImage') { w.width.value = 64; w.height.value = 64; }
            if (n.type === 'KSampler') { w.steps.value = 2; w.seed.value = 7; }
        }
        const stage = async (types) => {
            const pick = g._nodes.filter(n => types.includes(n.type));
            const { node } = g.convertToSubgraph(new Set(pick));
            const queued = (await window.app.graphToPrompt()).output;
            return { queued, workflow: g.serialize(), instance: String(node.id),
                     type: node.type };
        };
        const one = await stage(['KSampler', 'VAEDecode']);
        const two = await stage([one.type, 'CLIPTextEncode']);
        return [one, two];
    }""")
    for depth, stage in enumerate(stages, 1):
        queued = {k: {"class_type": v["class_type"],
                      "inputs": {n: x for n, x in v["inputs"].items() if n != "upload"}}
                  for k, v in stage["queued"].items()}
        inner = [k for k in queued if k.startswith(stage["instance"] + ":")]
        assert inner and all(k.count(":") <= depth for k in inner), queued
        reply = comfy_server.post("/workflow/convert", stage["workflow"])
        assert reply["warnings"] == [UNPACKED_SUBGRAPHS]
        ours = {k: {"class_type": v["class_type"], "inputs": v["inputs"]}
                for k, v in reply["document"]["prompt"].items()}
        assert ours == queued, f"depth {depth}"
    assert any(k.count(":") == 2 for k in ours)  # KSampler inside both
    pid = comfy_server.post("/prompt", {"prompt": reply["document"]["prompt"]})["prompt_id"]
    assert comfy_server.wait_history(pid, 240)["status"]["status_str"] == "success"


DROP_FILE_JS = """async ([data, name, type, base64]) => {
  const body = base64 ? Uint8Array.from(atob(data), (c) => c.charCodeAt(0)) : data;
  const file = new File([body], name, {type: type || 'application/json'});
  const dt = new DataTransfer(); dt.items.add(file);
  const target = document.querySelector('#graph-canvas') || document.querySelector('canvas');
  const r = target.getBoundingClientRect();
  const opts = {bubbles: true, cancelable: true, dataTransfer: dt,
                clientX: r.x + r.width / 2, clientY: r.y + r.height / 2};
  for (const kind of ['dragenter', 'dragover', 'drop']) {
    target.dispatchEvent(new DragEvent(kind, opts));
  }
}"""


def test_a_steerflow_document_dropped_on_comfyuis_app_loads_its_prompt(
        app: tuple[Any, list[str]]) -> None:
    """Our workflow files (workflows/*.json) dropped on ComfyUI's app loaded nothing: the app
    aborted with "e is not iterable" and emptied the tab. Our extension hands it the
    document's prompt, as an API-format prompt."""
    doc = json.loads((REPO / "workflows" / "img2img.json").read_text())
    wanted = {node["class_type"] for node in doc["prompt"].values()}
    page, page_errors = app
    page.evaluate(DROP_FILE_JS, [json.dumps(doc), "img2img.json"])
    page.wait_for_function("""(wanted) => {
        const types = new Set(window.app.graph._nodes.map(n => n.type));
        return wanted.every(t => types.has(t));
    }""", arg=sorted(wanted), timeout=30_000)
    types = page.evaluate("() => window.app.graph._nodes.map(n => n.type)")
    assert sorted(types) == sorted(n["class_type"] for n in doc["prompt"].values())
    assert not page_errors, page_errors


def test_a_png_made_from_our_canvas_opens_in_comfyuis_app(
        comfy_server: LiveServer, app: tuple[Any, list[str]]) -> None:
    """A PNG queued from our canvas carried our document in its ``workflow`` chunk, which
    ComfyUI reads first as its UI format: dropping it aborted with "e is not iterable" and
    emptied the graph. The chunk is now ComfyUI's UI view of it (ours is in ``steerflow``):
    the app opens the same nodes with the widget values that ran."""
    import base64

    doc = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    doc["prompt"]["3"]["inputs"]["steps"] = 3
    doc["prompt"]["9"]["inputs"]["filename_prefix"] = "from_canvas"
    reply = comfy_server.post("/prompt", {"prompt": doc["prompt"],
                                          "extra_data": {"extra_pnginfo": {"workflow": doc}}})
    entry = comfy_server.wait_history(reply["prompt_id"])
    image = entry["outputs"]["9"]["images"][0]
    png = comfy_server.get_bytes(f"/view?filename={image['filename']}&type=output")
    page, page_errors = app
    page.evaluate(DROP_FILE_JS, [base64.b64encode(png).decode(), "from_canvas.png",
                                 "image/png", True])
    page.wait_for_function("""() => window.app.graph._nodes.some(
        n => n.type === 'KSampler' && n.widgets_values?.[2] === 3)""", timeout=30_000)
    types = page.evaluate("() => window.app.graph._nodes.map(n => n.type)")
    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert sorted(types) == sorted(n["class_type"] for n in doc["prompt"].values())
    sampler = next(n for n in prompt.values() if n["class_type"] == "KSampler")
    assert sampler["inputs"]["steps"] == 3 and sampler["inputs"]["seed"] == 42
    assert not page_errors, page_errors


def test_a_prompt_queued_with_a_warning_shows_it(
        comfy_server: LiveServer, app: tuple[Any, list[str]]) -> None:
    """/prompt's reply says what it accepted with a warning (an unknown ``embedding:``,
    dropped as ComfyUI does); ComfyUI's frontend does not show a reply's warnings, so our
    extension toasts them, as it toasts a run's ``node_warning``."""
    graph = classic_default_graph("steerflow-shapes")
    nodes = {n["id"]: n for n in graph["nodes"]}
    nodes[5]["widgets_values"] = [64, 64, 1]
    nodes[3]["widgets_values"][2] = 1  # one step
    nodes[6]["widgets_values"] = ["a red circle, embedding:no_such_embedding"]
    page, page_errors = app
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", graph)
    queued = page.evaluate("async () => await window.app.api.queuePrompt(0, "
                           "await window.app.graphToPrompt())")
    assert any("no_such_embedding" in w["message"] for w in queued["warnings"])
    # a toast (the frontend's own component) naming the node and the warning
    page.wait_for_function("""() => [...document.querySelectorAll('div')].some(e =>
        e.children.length === 0 && e.offsetParent !== null
        && e.textContent.includes('no_such_embedding'))""", timeout=10_000)
    assert page.get_by_test_id("toast").filter(has_text="Warning from").filter(
        has_text="no_such_embedding").count() >= 1
    comfy_server.wait_history(queued["prompt_id"], timeout=120)
    assert not page_errors, page_errors
