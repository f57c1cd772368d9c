"""What ComfyUI's frontend calls beyond the core protocol (server/comfy_frontend.py),
and ``--front-end comfyui`` (server/config.py)."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from server import comfy_frontend
from server.config import ConfigError, ServerConfig
from tests.server.helpers import Http, LiveServer


def test_small_endpoints_answer_under_both_prefixes(http: Http, server: LiveServer) -> None:
    (server.base_dir / "models" / "checkpoints").mkdir(parents=True)
    for prefix in ("", "/api"):
        assert http.get(prefix + "/extensions").json() == [
            "/extensions/steerflow/about.js", "/extensions/steerflow/default_graph.js",
            "/extensions/steerflow/documents.js", "/extensions/steerflow/warnings.js"]
        assert http.get(prefix + "/i18n").json() == {}
        features = http.get(prefix + "/features").json()
        assert features["supports_preview_metadata"] is True
        assert features["max_upload_size"] == server.state.config.max_upload_bytes
        assert http.get(prefix + "/workflow_templates").json() == {}
        assert http.get(prefix + "/global_subgraphs").json() == {}
        paths = http.get(prefix + "/internal/folder_paths").json()
        assert paths["checkpoints"] == [str(server.base_dir / "models" / "checkpoints")]
        assert paths["input"] == [str(server.base_dir / "input")]


def test_steerflow_extension_is_served(http: Http) -> None:
    """Our script for ComfyUI's frontend: node warnings as toasts."""
    script = http.get("/extensions/steerflow/warnings.js")
    assert script.status == 200 and b'addEventListener("node_warning"' in script.body
    assert script.headers["Content-Type"].startswith("application/javascript")
    assert http.get("/extensions/steerflow/%2e%2e/extensions.py", raw=True).status in (403, 404)
    # and the one that opens our txt2img example where the app's default graph cannot run
    script = http.get("/extensions/steerflow/default_graph.js")
    assert script.status == 200 and b"/workflows/txt2img.json" in script.body


def test_templates_without_the_package(http: Http, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(comfy_frontend, "templates_dir", lambda: None)
    assert http.get("/templates/index.json").json() == []
    assert http.get("/templates/index.fr.json").json() == []
    assert http.get("/templates/index_logo.json").json() == {}
    assert http.get("/templates/x.png").status == 404


def test_templates_from_the_package(http: Http, monkeypatch: pytest.MonkeyPatch,
                                    tmp_path: Path) -> None:
    root = tmp_path / "templates"
    root.mkdir()
    (root / "index.json").write_text('[{"moduleName": "default"}]')
    (root / "a.webp").write_bytes(b"RIFF....WEBP")
    (tmp_path / "secret.json").write_text("{}")
    monkeypatch.setattr(comfy_frontend, "templates_dir", lambda: root)
    assert http.get("/templates/index.json").json() == [{"moduleName": "default"}]
    reply = http.get("/templates/a.webp")
    assert reply.status == 200 and reply.headers["Content-Type"] == "image/webp"
    assert http.get("/templates/..%2Fsecret.json", raw=True).status == 404
    assert http.get("/templates/missing.json").status == 404
    # an older package without the logos' index: none, as without the package
    assert http.get("/templates/index_logo.json").json() == {}
    (root / "index_logo.json").write_text('{"OpenAI": "logo/openai.png"}')
    assert http.get("/templates/index_logo.json").json() == {"OpenAI": "logo/openai.png"}


def test_embedded_docs_without_the_package(http: Http,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(comfy_frontend, "embedded_docs_dir", lambda: None)
    reply = http.get("/docs/KSampler/en.md")
    assert reply.status == 404 and reply.json()["error"]["type"] == "not_found"


def test_embedded_docs_from_the_package(http: Http, monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    """The node Info tab's pages, as ComfyUI serves ``comfyui-embedded-docs``."""
    root = tmp_path / "docs"
    (root / "KSampler" / "asset").mkdir(parents=True)
    (root / "KSampler" / "en.md").write_text("# KSampler\n![](asset/a.webp)\n")
    (root / "KSampler" / "asset" / "a.webp").write_bytes(b"RIFF....WEBP")
    (root / "KSampler" / "run.py").write_text("print()")
    (tmp_path / "secret.md").write_text("secret")
    (root / "Out").symlink_to(tmp_path)  # a link out of the package's folder
    monkeypatch.setattr(comfy_frontend, "embedded_docs_dir", lambda: root)
    reply = http.get("/docs/KSampler/en.md")
    assert reply.status == 200 and reply.body == b"# KSampler\n![](asset/a.webp)\n"
    assert reply.headers["Content-Type"].startswith("text/markdown")
    reply = http.get("/docs/KSampler/asset/a.webp")
    assert reply.status == 200 and reply.headers["Content-Type"] == "image/webp"
    for bad in ("KSampler/fr.md", "Nope/en.md", "KSampler", "KSampler/run.py",
                "..%2Fsecret.md", "Out/secret.md", "KSampler/..%2F..%2Fsecret.md"):
        reply = http.get(f"/docs/{bad}", raw=True)
        assert reply.status == 404 and reply.json()["error"]["type"] == "not_found", bad


def test_experiment_models(http: Http, server: LiveServer) -> None:
    ckpts = server.base_dir / "models" / "checkpoints"
    (ckpts / "diffusers-model").mkdir(parents=True)
    (ckpts / "diffusers-model" / "model_index.json").write_text("{}")
    (ckpts / "single.safetensors").write_bytes(b"x" * 10)
    (ckpts / "notes.txt").write_text("not a model")
    # one model as both a folder and a file (the built-in models): listed once
    (ckpts / "both").mkdir()
    (ckpts / "both" / "model_index.json").write_text("{}")
    (ckpts / "both.safetensors").write_bytes(b"y" * 4)
    folders = http.get("/api/experiment/models").json()
    assert {"name": "checkpoints", "folders": [str(ckpts)]} in folders
    assert "loras" in [f["name"] for f in folders]  # the frontend's known folders
    files = http.get("/api/experiment/models/checkpoints").json()
    assert [f["name"] for f in files] == ["both.safetensors", "diffusers-model",
                                          "single.safetensors"]
    assert files[2]["pathIndex"] == 0 and files[2]["size"] == 10
    assert http.get("/api/experiment/models/loras").json() == []
    for bad in ("nope", "..", "%2E%2E", "a%2Fb"):
        reply = http.get(f"/api/experiment/models/{bad}", raw=True)
        assert reply.status in (404,), bad


def _picture(color: str, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, format=fmt)
    return buf.getvalue()


def _safetensors(meta: dict[str, str]) -> bytes:
    header = json.dumps({"__metadata__": meta}).encode()
    return len(header).to_bytes(8, "little") + header


def _webp_color(body: bytes) -> tuple[int, ...]:
    with Image.open(io.BytesIO(body)) as img:
        assert img.format == "WEBP" and img.size == (8, 6)
        return img.convert("RGB").getpixel((4, 3))


def test_model_previews_as_comfyui_finds_them(http: Http, server: LiveServer,
                                              tmp_path: Path) -> None:
    """The model library asks ``/experiment/models/preview/{folder}/0/{name}.webp`` for
    each row: a picture beside the model (``name.png``, ``name.preview.webp``...) or a
    cover in its safetensors metadata, sent as WebP; none is a JSON 404."""
    import base64

    ckpts = server.base_dir / "models" / "checkpoints"
    (ckpts / "sub").mkdir(parents=True)
    (ckpts / "plain.safetensors").write_bytes(_safetensors({}))
    (ckpts / "plain.png").write_bytes(_picture("red"))
    (ckpts / "sub" / "nested.ckpt").write_bytes(b"x")
    (ckpts / "sub" / "nested.preview.jpeg").write_bytes(_picture("blue", "JPEG"))
    cover = base64.b64encode(_picture("lime")).decode()
    (ckpts / "covered.safetensors").write_bytes(
        _safetensors({"ssmd_cover_images": json.dumps([cover])}))
    (ckpts / "thumb.safetensors").write_bytes(
        _safetensors({"modelspec.thumbnail": "data:image/png;base64," + cover}))
    (ckpts / "bare.safetensors").write_bytes(_safetensors({"title": "no picture"}))
    (ckpts / "broken.safetensors").write_bytes(b"x")
    (ckpts / "broken.png").write_bytes(b"not a picture")
    (tmp_path / "outside.png").write_bytes(_picture("white"))
    (ckpts / "linked.safetensors").write_bytes(b"x")
    (ckpts / "linked.png").symlink_to(tmp_path / "outside.png")  # out of the folder
    (server.base_dir / "models" / "secret.png").write_bytes(_picture("white"))
    for prefix in ("", "/api"):
        reply = http.get(prefix + "/experiment/models/preview/checkpoints/0/plain.webp")
        assert reply.status == 200 and reply.headers["Content-Type"] == "image/webp"
        assert _webp_color(reply.body)[0] > 200  # red
    red = _webp_color(http.get("/experiment/models/preview/checkpoints/0/plain.safetensors")
                      .body)
    assert red[0] > 200 and red[2] < 60
    blue = _webp_color(http.get("/experiment/models/preview/checkpoints/0/sub/nested.webp")
                       .body)
    assert blue[2] > 200 and blue[0] < 60
    for name in ("covered.webp", "thumb.webp"):
        reply = http.get(f"/experiment/models/preview/checkpoints/0/{name}")
        assert reply.status == 200, name
        assert _webp_color(reply.body)[1] > 200 and _webp_color(reply.body)[0] < 60
    for path in ("checkpoints/0/bare.webp", "checkpoints/0/broken.webp",
                 "checkpoints/0/missing.webp", "checkpoints/0/linked.webp",
                 "checkpoints/0/..%2Fsecret.webp", "checkpoints/0/sub%2F..%2F..%2Fsecret.webp",
                 "checkpoints/1/plain.webp", "loras/0/plain.webp", "..%2Fmodels/0/secret.webp"):
        reply = http.get(f"/experiment/models/preview/{path}", raw=True)
        assert reply.status == 404 and reply.json()["error"]["type"] == "not_found", path


def test_extension_sources_hook(make_server: Callable[..., LiveServer], loop: object) -> None:
    def broken() -> list[str]:
        raise RuntimeError("a pack failed")

    def setup(app: object) -> None:
        comfy_frontend.add_extension_source(app, lambda: ["/extensions/pack/a.js"])  # type: ignore[arg-type]
        comfy_frontend.add_extension_source(app, broken)  # type: ignore[arg-type]
        comfy_frontend.add_extension_source(app, lambda: ["/extensions/pack/a.js",  # type: ignore[arg-type]
                                                          "/extensions/other/b.js"])

    server = make_server(setup)
    http = Http(server.url, loop)  # type: ignore[arg-type]
    try:
        assert http.get("/api/extensions").json() == ["/extensions/steerflow/about.js",
                                                     "/extensions/steerflow/default_graph.js",
                                                     "/extensions/steerflow/documents.js",
                                                     "/extensions/steerflow/warnings.js",
                                                     "/extensions/pack/a.js",
                                                     "/extensions/other/b.js"]
    finally:
        http.close()


# --- /upload/mask -----------------------------------------------------------------
def _png(img: Image.Image, text: dict[str, str] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _mask_form(mask: bytes, ref: object, **fields: str) -> object:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("image", mask, filename="clipspace-mask-1.png", content_type="image/png")
    form.add_field("original_ref", ref if isinstance(ref, str) else json.dumps(ref))
    for key, value in fields.items():
        form.add_field(key, value)
    return form


def test_upload_mask_puts_the_mask_into_the_alpha_channel(http: Http,
                                                          server: LiveServer) -> None:
    inputs = server.base_dir / "input"
    inputs.mkdir(parents=True)
    original = Image.new("RGB", (8, 6), (200, 10, 20))
    (inputs / "photo.png").write_bytes(_png(original, {"workflow": '{"nodes": []}'}))
    mask = Image.new("RGBA", (8, 6), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 4, 6))  # left half erased: to be inpainted
    reply = http.post("/api/upload/mask", data=_mask_form(
        _png(mask), {"filename": "photo.png", "subfolder": "", "type": "input"},
        type="input", subfolder="clipspace"))
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body == {"name": "clipspace-mask-1.png", "subfolder": "clipspace", "type": "input"}
    with Image.open(inputs / "clipspace" / body["name"]) as out:
        assert out.mode == "RGBA" and out.size == (8, 6)
        assert out.getpixel((1, 1)) == (200, 10, 20, 0)
        assert out.getpixel((6, 1)) == (200, 10, 20, 255)
        assert out.text["workflow"] == '{"nodes": []}'

    # a mask of another size is scaled to the original; annotated names work
    small = Image.new("RGBA", (4, 3), (0, 0, 0, 128))
    reply = http.post("/upload/mask", data=_mask_form(
        _png(small), {"filename": "photo.png [input]"}, subfolder="clipspace"))
    assert reply.status == 200
    with Image.open(inputs / "clipspace" / reply.json()["name"]) as out:
        assert out.size == (8, 6) and out.getpixel((0, 0))[3] == 128


@pytest.mark.parametrize("ref, status, kind", [
    ("not json", 400, "invalid_original_ref"),
    ({"subfolder": ""}, 400, "invalid_original_ref"),
    ({"filename": "missing.png", "type": "input"}, 404, "not_found"),
    ({"filename": "../../data/steerflow.db", "type": "input"}, 403, "forbidden_path"),
    ({"filename": "photo.png", "type": "models"}, 400, "invalid_type"),
])
def test_upload_mask_bad_references(http: Http, server: LiveServer, ref: object, status: int,
                                    kind: str) -> None:
    (server.base_dir / "input").mkdir(parents=True, exist_ok=True)
    (server.base_dir / "input" / "photo.png").write_bytes(_png(Image.new("RGB", (2, 2))))
    mask = _png(Image.new("RGBA", (2, 2)))
    reply = http.post("/api/upload/mask", data=_mask_form(mask, ref))
    assert reply.status == status and reply.json()["error"]["type"] == kind


def test_upload_mask_refuses_a_non_image(http: Http, server: LiveServer) -> None:
    (server.base_dir / "input").mkdir(parents=True)
    (server.base_dir / "input" / "photo.png").write_bytes(_png(Image.new("RGB", (2, 2))))
    reply = http.post("/api/upload/mask", data=_mask_form(
        b"<script>alert(1)</script>", {"filename": "photo.png", "type": "input"}))
    assert reply.status == 415 and reply.json()["error"]["type"] == "not_an_image"
    reply = http.post("/api/upload/mask", data={"original_ref": "{}"})
    assert reply.status == 400


# --- --front-end comfyui --------------------------------------------------------------
def test_front_end_comfyui_needs_the_package(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"pip install 'steerflow\[comfyui-frontend\]'"):
        ServerConfig(base_dir=tmp_path, front_end="comfyui")
    with pytest.raises(ConfigError, match="--front-end"):
        ServerConfig(base_dir=tmp_path, front_end="other")


def test_front_end_comfyui_serves_the_package(make_server: Callable[..., LiveServer],
                                              loop: object, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "site" / "comfyui_frontend_package"
    (pkg / "static" / "assets").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "static" / "index.html").write_text("<title>ComfyUI</title>")
    (pkg / "static" / "assets" / "app.js").write_text("export {}")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "comfyui_frontend_package", raising=False)
    server = make_server(front_end="comfyui")  # replaces the web_dir make_server sets
    assert server.state.config.web_dir.resolve() == (pkg / "static").resolve()
    http = Http(server.url, loop)  # type: ignore[arg-type]
    try:
        assert b"ComfyUI" in http.get("/").body
        reply = http.get("/assets/app.js")
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/javascript")
        assert http.get("/api/users").status == 200
        info = http.get("/object_info").json()  # its node names: ComfyUI's where known
        assert info and all(v["display_name"] for v in info.values())
    finally:
        http.close()


def test_serve_option_parses() -> None:
    from steerflow.cli import build_parser

    args = build_parser().parse_args(["serve", "--front-end", "comfyui"])
    assert args.front_end == "comfyui"
    assert build_parser().parse_args(["serve"]).front_end == "steerflow"


# --- /jobs ------------------------------------------------------------------------------
def test_jobs_list_queue_and_history(http: Http) -> None:
    import time

    from tests.server.helpers import chain

    assert http.get("/api/jobs").json() == {
        "jobs": [], "pagination": {"offset": 0, "limit": 200, "total": 0, "has_more": False}}
    ids = [http.post("/api/prompt", json={"prompt": chain(i)}).json()["prompt_id"]
           for i in range(3)]
    deadline = time.monotonic() + 60
    while len(http.get("/api/history").json()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    done = http.get("/api/jobs?status=completed,failed,cancelled&limit=2&offset=0").json()
    assert [j["id"] for j in done["jobs"]] == ids[::-1][:2]  # newest first
    assert done["pagination"]["has_more"] is True
    assert all(j["status"] == "completed" for j in done["jobs"])
    assert done["jobs"][0]["execution_end_time"] >= done["jobs"][0]["execution_start_time"]
    assert http.get("/api/jobs?status=in_progress,pending").json()["jobs"] == []
    one = http.get(f"/api/jobs/{ids[0]}").json()
    assert one["id"] == ids[0] and "outputs" in one and one["workflow"]["prompt"]
    assert http.get("/api/jobs/nope").status == 404
    assert http.get("/api/jobs?status=bogus").status == 400
    assert http.get("/api/jobs?limit=1e9").status == 400
    assert http.get("/api/jobs?limit=-1").status == 400
    huge = http.get("/api/jobs?limit=" + "9" * 23)  # capped, as /history caps max_items
    assert huge.status == 200 and huge.json()["pagination"]["limit"] <= 10_000


def test_jobs_survive_history_entries_with_odd_extra_data(server: LiveServer, http: Http) -> None:
    """Servers before /prompt checked extra_pnginfo stored whatever clients sent; one such
    entry made every /jobs listing (the new frontend's queue panel) a 500."""
    for i, pnginfo in enumerate([5, ["workflow"], "x", {"workflow": 3}, {"workflow": {"id": 7}}]):
        entry = {"prompt": [i, f"odd-{i}", {}, {"extra_pnginfo": pnginfo}, []], "outputs": {},
                 "status": {"status_str": "success", "completed": True, "messages": []}}
        server.state.storage.finish(f"odd-{i}", i, entry)
    jobs = http.get("/api/jobs")
    assert jobs.status == 200, jobs.body
    assert {j["id"]: j["workflow_id"] for j in jobs.json()["jobs"]} == {
        f"odd-{i}": None for i in range(5)}
    assert http.get("/api/jobs/odd-0").json()["workflow_id"] is None


def test_a_job_failed_as_a_whole_still_has_the_error_fields_the_frontend_requires(
        server: LiveServer, http: Http) -> None:
    """A prompt that failed as a whole (no worker, a restart) names no node: its
    ``execution_error`` had ``node_id`` null, and ComfyUI's frontend refused the whole job
    list over it (its schema wants strings, records and a list of strings)."""
    error = {"prompt_id": "whole", "node_id": None, "node_type": None,
             "exception_message": "no worker is available", "exception_type": "WorkerDied",
             "traceback": "not a list", "current_inputs": [], "current_outputs": [],
             "timestamp": 5}
    entry = {"prompt": [1, "whole", {}, {}, []], "outputs": {},
             "status": {"status_str": "error", "completed": False,
                        "messages": [["execution_error", error]]}}
    server.state.storage.finish("whole", 1, entry)
    job = next(j for j in http.get("/api/jobs").json()["jobs"] if j["id"] == "whole")
    shown = job["execution_error"]
    assert shown["node_id"] == "" and shown["node_type"] == ""
    assert shown["exception_message"] == "no worker is available"
    assert shown["traceback"] == [] and shown["current_inputs"] == {}
    assert shown["current_outputs"] == {}
    assert http.get("/api/jobs/whole").json()["execution_error"] == shown


def test_internal_files_lists_a_folder_newest_first(http: Http, server: LiveServer) -> None:
    """ComfyUI's Assets panel (Imported / Generated) reads /internal/files/{type}: it was a
    404, so the panel stayed empty and every upload logged an error in the console."""
    import os

    folder = server.base_dir / "input"
    folder.mkdir(exist_ok=True)
    for age, name in enumerate(["new.png", "old.png"]):
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (2_000_000_000 - age * 100, 2_000_000_000 - age * 100))
    (folder / ".hidden.png").write_bytes(b"x")
    (folder / "sub").mkdir(exist_ok=True)
    names = http.get("/api/internal/files/input").json()
    assert names[:2] == ["new.png", "old.png"]
    assert ".hidden.png" not in names and "sub" not in names
    assert http.get("/internal/files/output").status == 200
    bad = http.get("/api/internal/files/models")
    assert bad.status == 400 and bad.json()["error"]["type"] == "invalid_directory_type"


def test_the_mask_editors_views_are_what_load_image_reads(http: Http,
                                                          server: LiveServer) -> None:
    """A phone's JPEG (EXIF orientation 6) showed sideways in the mask editor and came back
    turned; a palette PNG's transparent colour was no alpha to the editor, so its mask was
    lost on the first save. /view's re-encodes and /upload/mask now read them upright and
    with that alpha, as Load Image does."""
    inputs = server.base_dir / "input"
    inputs.mkdir(parents=True, exist_ok=True)
    photo = Image.new("RGB", (20, 10), (10, 200, 30))
    exif = photo.getexif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", exif=exif.tobytes())
    (inputs / "phone.jpg").write_bytes(buf.getvalue())
    rgb = http.get("/view", params={"filename": "phone.jpg", "type": "input",
                                    "channel": "rgb"})
    with Image.open(io.BytesIO(rgb.body)) as shown:
        assert shown.size == (10, 20)
    mask = Image.new("RGBA", (10, 20), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 10, 5))
    reply = http.post("/upload/mask", data=_mask_form(
        _png(mask), {"filename": "phone.jpg", "subfolder": "", "type": "input"},
        type="input", subfolder="clipspace"))
    with Image.open(inputs / "clipspace" / reply.json()["name"]) as out:
        assert out.size == (10, 20) and out.getpixel((5, 2))[3] == 0
        assert out.getpixel((5, 15))[3] == 255

    palette = Image.new("P", (6, 4), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (0, 0, 3, 4))
    palette.save(inputs / "pal.png", transparency=1)
    alpha = http.get("/view", params={"filename": "pal.png", "type": "input", "channel": "a"})
    with Image.open(io.BytesIO(alpha.body)) as a:
        assert a.getpixel((1, 1)) == 0 and a.getpixel((5, 1)) == 255


def test_comfyuis_frontend_shows_comfyuis_node_names() -> None:
    """Under ``--front-end comfyui`` a ComfyUI user sees "KSampler" and "CLIP Text Encode
    (Prompt)", not our "Sample" and "Encode Prompt" (which stay searchable); our canvas
    keeps ours. A node without a ComfyUI name is left as it is."""
    import nodes  # noqa: F401  (sets the ComfyUI names)
    from nodes.conditioning import CLIPTextEncode
    from nodes.sampling import KSampler
    from server.info import comfy_named

    for cls, comfy, ours in ((KSampler, "KSampler", "Sample"),
                             (CLIPTextEncode, "CLIP Text Encode (Prompt)", "Encode Prompt")):
        schema = cls.schema(None)
        assert schema["display_name"] == ours
        comfy_named(schema, cls.comfy_display_name())
        assert schema["display_name"] == comfy
        assert ours in schema["search_aliases"] and comfy not in schema["search_aliases"]
    plain = {"display_name": "Mine", "search_aliases": ["x"]}
    assert comfy_named(dict(plain), None) == plain
    assert comfy_named(dict(plain), "Mine") == plain
