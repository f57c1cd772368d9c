"""``comfy_api.v0_0_1``: ComfyUI's versioned alias of :mod:`comfy_api.latest`."""

from comfy_api.latest import IO, UI, ComfyExtension, Input, InputImpl, Types, io, ui

__all__ = ["IO", "UI", "ComfyExtension", "Input", "InputImpl", "Types", "io", "ui"]
