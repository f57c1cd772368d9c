"""ComfyUI's ``comfy_extras.nodes_clip_sdxl``: ``CLIPTextEncodeSDXL``, run by
Steerflow's built-in node of that name (see :mod:`comfy_compat.builtin_nodes`)."""

from typing import Any

from comfy_compat.shims._missing import missing_attributes

_missing = missing_attributes(__name__)


def __getattr__(name: str) -> Any:
    if name == "CLIPTextEncodeSDXL":
        from comfy_compat.builtin_nodes import comfy_class

        return comfy_class(name)
    return _missing(name)
