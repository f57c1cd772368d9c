"""ComfyUI UI-format workflows for the converter's tests, and the schemas to read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The real server's /object_info (a snapshot the canvas's tests also use).
OBJECT_INFO = REPO / "web" / "src" / "lib" / "fixtures" / "object_info.json"


def pack_registry(folder: Path, packs: dict[str, str], *modules: Any) -> Any:
    """A NodeRegistry with ``modules`` (Steerflow node modules) and the custom node packs
    ``packs`` (file name → source) written to ``folder`` and loaded through the adapter."""
    from comfy_compat import ADAPTER
    from engine import NodeRegistry

    ADAPTER.prepare()
    for name, source in packs.items():
        (folder / name).write_text(source)
    registry = NodeRegistry()
    for module in modules:
        registry.add_module(module)
    registry.load_directory(folder)
    return registry


def object_info() -> dict[str, Any]:
    return json.loads(OBJECT_INFO.read_text())


def comfy_default(ckpt: str = "steerflow-tiny", size: int = 64) -> dict[str, Any]:
    """ComfyUI's default graph as its Save writes it, with a Reroute (on the VAE), a
    PrimitiveNode (on the seed), a Note and a group."""
    return {
        "last_node_id": 12, "last_link_id": 12,
        "nodes": [
            {"id": 4, "type": "CheckpointLoaderSimple", "pos": [26, 474],
             "size": {"0": 315, "1": 98}, "mode": 0,
             "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]},
                         {"name": "CLIP", "type": "CLIP", "links": [3, 5]},
                         {"name": "VAE", "type": "VAE", "links": [10]}],
             "widgets_values": [ckpt]},
            {"id": 5, "type": "EmptyLatentImage", "pos": [473, 609], "size": [315, 106],
             "mode": 0, "outputs": [{"name": "LATENT", "type": "LATENT", "links": [2]}],
             "widgets_values": [size, size, 1]},
            {"id": 6, "type": "CLIPTextEncode", "pos": [415, 186], "size": [422, 164],
             "mode": 0, "title": "Positive",
             "inputs": [{"name": "clip", "type": "CLIP", "link": 5}],
             "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [4]}],
             "widgets_values": ["beautiful scenery nature glass bottle landscape"]},
            {"id": 7, "type": "CLIPTextEncode", "pos": [413, 389], "size": [425, 180],
             "mode": 0, "inputs": [{"name": "clip", "type": "CLIP", "link": 3}],
             "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [6]}],
             "widgets_values": ["text, watermark"]},
            {"id": 3, "type": "KSampler", "pos": [863, 186], "size": [315, 262], "mode": 0,
             "inputs": [
                 {"name": "model", "type": "MODEL", "link": 1},
                 {"name": "positive", "type": "CONDITIONING", "link": 4},
                 {"name": "negative", "type": "CONDITIONING", "link": 6},
                 {"name": "latent_image", "type": "LATENT", "link": 2},
                 {"name": "seed", "type": "INT", "link": 12, "widget": {"name": "seed"}}],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": [7]}],
             "widgets_values": [156680208700286, "randomize", 3, 8, "euler", "normal", 1]},
            {"id": 8, "type": "VAEDecode", "pos": [1209, 188], "size": [210, 46], "mode": 0,
             "inputs": [{"name": "samples", "type": "LATENT", "link": 7},
                        {"name": "vae", "type": "VAE", "link": 11}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [9]}]},
            {"id": 9, "type": "SaveImage", "pos": [1451, 189], "size": [210, 58], "mode": 0,
             "inputs": [{"name": "images", "type": "IMAGE", "link": 9}],
             "widgets_values": ["ComfyUI"]},
            {"id": 10, "type": "Reroute", "pos": [1000, 500], "size": [75, 26], "mode": 0,
             "inputs": [{"name": "", "type": "*", "link": 10}],
             "outputs": [{"name": "", "type": "VAE", "links": [11]}]},
            {"id": 11, "type": "PrimitiveNode", "pos": [600, 0], "size": [210, 82], "mode": 0,
             "outputs": [{"name": "INT", "type": "INT", "links": [12],
                          "widget": {"name": "seed"}}],
             "widgets_values": [42, "fixed"]},
            {"id": 12, "type": "Note", "pos": [0, 0], "size": [200, 60], "mode": 0,
             "widgets_values": ["hello"]},
        ],
        "links": [
            [1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 7, 0, "CLIP"],
            [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 6, 0, "CLIP"],
            [6, 7, 0, 3, 2, "CONDITIONING"], [7, 3, 0, 8, 0, "LATENT"], [9, 8, 0, 9, 0, "IMAGE"],
            [10, 4, 2, 10, 0, "VAE"], [11, 10, 0, 8, 1, "VAE"], [12, 11, 0, 3, 4, "INT"],
        ],
        "groups": [{"title": "Prompts", "bounding": [400, 100, 460, 500], "color": "#3f789e"}],
        "config": {}, "extra": {"ds": {"scale": 0.5, "offset": [100, -40]}}, "version": 0.4,
    }


def node(wf: dict[str, Any], node_id: int) -> dict[str, Any]:
    return next(n for n in wf["nodes"] if n["id"] == node_id)
