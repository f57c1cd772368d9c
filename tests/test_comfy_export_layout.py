"""The ComfyUI UI view of a document whose layout has no sizes (a CLI run's or a plain
API prompt's PNG): each node gets the size ComfyUI's front end draws it at, and the
columns are spread so that no two nodes overlap (engine/comfy_export.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.comfy_export import TITLE_HEIGHT, ui_view
from engine.comfy_workflow import RegistrySchemas
from engine.registry import default_registry
from engine.workflow import prompt_to_document

SCHEMAS = RegistrySchemas(default_registry())  # every node's, as a run writes its PNG
EXAMPLES = sorted(Path(__file__).resolve().parents[1].glob("workflows/*.json"))


def boxes(view: dict[str, Any]) -> dict[Any, tuple[float, float, float, float]]:
    """Each node's box, its title bar (drawn above ``pos``) included."""
    return {n["id"]: (n["pos"][0], n["pos"][1] - TITLE_HEIGHT,
                      n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
            for n in view["nodes"] if n["type"] != "Reroute"}


def overlaps(view: dict[str, Any], gap: float = 10.0) -> list[tuple[Any, Any]]:
    """The pairs of nodes closer than ``gap`` on both axes."""
    out = []
    items = list(boxes(view).items())
    for i, (a, (ax0, ay0, ax1, ay1)) in enumerate(items):
        for b, (bx0, by0, bx1, by1) in items[i + 1:]:
            if ax0 < bx1 + gap and bx0 < ax1 + gap and ay0 < by1 + gap and by0 < ay1 + gap:
                out.append((a, b))
    return out


def test_txt2img_nodes_get_comfyuis_sizes_and_keep_clear() -> None:
    doc = json.loads((EXAMPLES[0].parent / "txt2img.json").read_text())
    view = ui_view(doc, SCHEMAS)
    size = {n["type"]: n["size"] for n in view["nodes"]}
    # at least as ComfyUI's front end draws them (its default graph's sizes; ours may
    # have a widget more)
    for kind, (width, height) in {"KSampler": (315, 262), "CheckpointLoaderSimple": (315, 98),
                                  "EmptyLatentImage": (315, 106), "CLIPTextEncode": (400, 160),
                                  "VAEDecode": (210, 46)}.items():
        assert size[kind][0] >= width and size[kind][1] >= height, (kind, size[kind])
    assert not overlaps(view)
    # a title that is the display name is written as none (ComfyUI shows its own name)
    pos = {n.get("title", SCHEMAS[n["type"]]["display_name"]): n["pos"] for n in view["nodes"]}
    # the example's columns and their order are kept
    assert pos["Load Checkpoint"][0] < pos["Positive Prompt"][0] == pos["Negative Prompt"][0] \
        < pos["Sample"][0] < pos["VAE Decode"][0] == pos["Save Image"][0]
    assert pos["Positive Prompt"][1] < pos["Negative Prompt"][1] < pos["Empty Latent Image"][1]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_no_two_nodes_of_an_example_overlap(path: Path) -> None:
    doc = json.loads(path.read_text())
    view = ui_view(doc, SCHEMAS)
    assert not overlaps(view), path.name
    for node in view["nodes"]:  # every node's widgets are counted: none is a bare title
        if node["type"] != "Reroute" and node.get("widgets_values"):
            assert node["size"][1] >= 24 * len(node["widgets_values"]), node["type"]
    # the same prompt sent bare (an API client's POST /prompt): laid out by depth
    bare = prompt_to_document({k: {f: v for f, v in node.items() if f != "_meta"}
                               for k, node in doc["prompt"].items()})
    assert not overlaps(ui_view(bare, SCHEMAS)), path.name


def test_a_layout_with_sizes_is_kept_as_it_is() -> None:
    """A document converted from ComfyUI's UI format knows its nodes' sizes: the view
    gives them back unmoved, even where the user let them overlap."""
    doc = json.loads((EXAMPLES[0].parent / "txt2img.json").read_text())
    places = doc["layout"]["nodes"]
    for i, nid in enumerate(places):
        places[nid] = {**places[nid], "pos": [10.0 * i, 5.0 * i], "size": [200.0, 80.0]}
    view = ui_view(doc, SCHEMAS)
    assert {str(n["id"]): (n["pos"], n["size"]) for n in view["nodes"]} == {
        nid: (p["pos"], p["size"]) for nid, p in places.items()}


def test_a_group_still_holds_its_nodes_and_a_reroute_moves_with_its_column() -> None:
    doc = json.loads((EXAMPLES[0].parent / "txt2img.json").read_text())
    # the prompts' column (x 285), in a group drawn round it as our canvas drew it
    doc["layout"]["groups"] = [{"title": "Prompts", "bounding": [275, -40, 290, 390]}]
    doc["layout"]["reroutes"] = {"50": {"pos": [300, 600], "input": ["4", 1]}}
    view = ui_view(doc, SCHEMAS)
    x, y, w, h = view["groups"][0]["bounding"]
    box = boxes(view)
    for nid in (6, 7):  # Positive and Negative Prompt
        x0, y0, x1, y1 = box[nid]
        assert x <= x0 and y <= y0 and x1 <= x + w and y1 <= y + h, (nid, box[nid])
    reroute = next(n for n in view["nodes"] if n["type"] == "Reroute")
    prompt = next(n for n in view["nodes"] if n["id"] == 6)
    assert reroute["pos"] == [300 + prompt["pos"][0] - 285, 600]
    assert not overlaps(view)
