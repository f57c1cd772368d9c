"""ComfyUI's display names of the core nodes Steerflow implements, as search aliases.

Steerflow shows some ComfyUI nodes under its own names (KSampler is "Sample",
CLIPTextEncode "Encode Prompt"); a ComfyUI user types the names ComfyUI shows. The names
are data (``assets/comfy_display_names.json``, read from ComfyUI's sources); this module
sets each class's :attr:`engine.node.Node.COMFY_DISPLAY_NAME` from them, and the schema
lists it among the node's ``search_aliases`` where it differs from the name shown.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from engine.node import Node

TABLE = Path(__file__).resolve().parent / "assets" / "comfy_display_names.json"


@cache
def comfy_display_names() -> dict[str, str]:
    """Node type id -> the name ComfyUI shows it under."""
    names = json.loads(TABLE.read_text(encoding="utf-8"))["names"]
    return {str(k): str(v) for k, v in names.items()}


def set_comfy_display_names(classes: Iterable[type[Node]]) -> None:
    """Give each class whose TYPE ComfyUI ships its ComfyUI display name."""
    names = comfy_display_names()
    for cls in classes:
        name = names.get(cls.TYPE)
        if name:
            cls.COMFY_DISPLAY_NAME = name
