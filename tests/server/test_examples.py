"""The examples browser's data: every shipped example's title, description and thumbnail,
and the built-in models' cards where a checkpoint is picked."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.server.helpers import Http, LiveServer, Loop

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "workflows"
STALE = ("steerflow-tiny", "random", "Canny", "noise.")  # what the old descriptions said


def test_every_shipped_example_has_title_description_and_thumbnail(
        make_server: Callable[..., LiveServer], loop: Loop):
    server = make_server(workflows_dir=SHIPPED)
    http = Http(server.url, loop)
    try:
        names = http.get("/workflows").json()  # the plain listing is unchanged: names
        details = http.get("/workflows?details=1").json()
        assert [d["name"] for d in details] == names
        assert len(names) == len(list(SHIPPED.glob("*.json"))) >= 25
        for d in details:
            assert d["title"].strip() and d["title"] != Path(d["name"]).stem, d["name"]
            assert len(d["description"]) > 20, d["name"]
            thumb = d["thumbnail"]
            if thumb is None:  # the canvas draws a placeholder
                assert not (SHIPPED / "thumbnails" / f"{Path(d['name']).stem}.png").exists()
                continue
            reply = http.get("/" + thumb)
            assert reply.status == 200, thumb
            assert reply.headers["Content-Type"] == "image/png"
            assert reply.body[:8] == b"\x89PNG\r\n\x1a\n"
        with_thumb = sum(d["thumbnail"] is not None for d in details)
        assert with_thumb >= 25, with_thumb
        # the three examples whose descriptions spoke of the old tiny random models
        by_name = {d["name"]: d for d in details}
        for name in ("controlnet.json", "lora.json", "combined.json"):
            text = by_name[name]["description"]
            assert not any(s in text for s in STALE), (name, text)
            assert "steerflow-shapes" in text or "default model" in text, name
    finally:
        http.close()


def test_thumbnail_route_is_confined(server: LiveServer, http: Http):
    folder = server.state.config.workflows_dir
    (folder / "thumbnails").mkdir(parents=True)
    (folder / "a.json").write_text(json.dumps({"prompt": {}, "extra": {"description": "An a."}}))
    (folder / "thumbnails" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    (server.base_dir / "secret.png").write_bytes(b"secret")
    (folder / "thumbnails" / "leak.png").symlink_to(server.base_dir / "secret.png")
    [entry] = http.get("/workflows?details=1").json()
    assert entry == {"name": "a.json", "title": "a", "description": "An a.",
                     "thumbnail": "workflows/thumbnails/a.png", "requires_models": []}
    assert http.get("/workflows/thumbnails/a.png").body.endswith(b"fake")
    assert http.get("/workflows/thumbnails/leak.png").status == 403
    assert http.get("/workflows/thumbnails/missing.png").status == 404
    assert http.get("/workflows/other.png").status == 404  # only thumbnails/ serves images
    assert http.get("/workflows/thumbnails/..%2F..%2Fsecret.png", raw=True).status in (403, 404)


def test_checkpoint_listing_carries_model_cards(server: LiveServer, http: Http):
    ckpts = server.base_dir / "models" / "checkpoints"
    (ckpts / "steerflow-shapes").mkdir(parents=True)
    (ckpts / "steerflow-shapes" / "model_index.json").write_text("{}")
    (ckpts / "steerflow-shapes.safetensors").write_bytes(b"x")
    (ckpts / "mine.safetensors").write_bytes(b"x")
    assert http.get("/models/checkpoints").json() == [
        "mine.safetensors", "steerflow-shapes", "steerflow-shapes.safetensors"]
    listed = {e["name"]: e["info"] for e in http.get("/models/checkpoints?info=1").json()}
    assert listed["mine.safetensors"] is None
    for name in ("steerflow-shapes", "steerflow-shapes.safetensors"):
        card = listed[name]
        assert card["native_size"] == [64, 64]
        assert "circle" in card["draws"] and "background" in card["draws"]


def test_controlnet_folder_names_carry_their_model_cards(server: LiveServer, http: Http):
    """Load ControlNet Model offers a diffusers folder by its name (steerflow-shapes-adapter,
    its default): the card listing named only the files in it, so the canvas showed none."""
    cn = server.base_dir / "models" / "controlnet"
    (cn / "steerflow-shapes-adapter").mkdir(parents=True)
    (cn / "steerflow-shapes-adapter" / "config.json").write_text("{}")
    (cn / "steerflow-shapes-adapter" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    listed = {e["name"]: e["info"] for e in http.get("/models/controlnet?info=1").json()}
    assert "T2I-Adapter" in listed["steerflow-shapes-adapter"]["draws"]
    # ComfyUI's plain listing (files only) is unchanged
    assert "steerflow-shapes-adapter" not in http.get("/models/controlnet").json()
