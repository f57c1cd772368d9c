"""Graph fragments shared by tests that combine a technique with region prompts."""

from __future__ import annotations

from typing import Any


def with_region(prompt: dict[str, Any], regions: str, text: str) -> dict[str, Any]:
    """``prompt`` (the examples' numbering: "4" the checkpoint, "6" the positive, "3" the
    sampler) whose positive also holds ``text`` on a 40x24 box at (8, 8) of a 64x64 canvas:
    Conditioning Set Area (``regions`` "area"), or Conditioning Set Mask with
    set_cond_area "mask bounds"; both are predicted on a crop of the latent."""
    g = dict(prompt)
    g["a"] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}}
    if regions == "area":
        g["r"] = {"class_type": "ConditioningSetArea", "inputs": {
            "conditioning": ["a", 0], "width": 40, "height": 24, "x": 8, "y": 8,
            "strength": 1.0}}
    else:
        g["m0"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64,
                                                         "height": 64}}
        g["m1"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 40,
                                                         "height": 24}}
        g["m"] = {"class_type": "MaskComposite", "inputs": {
            "destination": ["m0", 0], "source": ["m1", 0], "x": 8, "y": 8,
            "operation": "add"}}
        g["r"] = {"class_type": "ConditioningSetMask", "inputs": {
            "conditioning": ["a", 0], "mask": ["m", 0], "strength": 1.0,
            "set_cond_area": "mask bounds"}}
    g["all"] = {"class_type": "ConditioningCombine", "inputs": {
        "conditioning_1": ["6", 0], "conditioning_2": ["r", 0]}}
    g["3"] = {**g["3"], "inputs": {**g["3"]["inputs"], "positive": ["all", 0]}}
    return g
