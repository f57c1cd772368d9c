"""``comfy_api.v0_0_1``: ComfyUI's versioned alias of :mod:`comfy_api.latest`."""

from comfy_api.latest import IO, UI, ComfyExtension, Input, InputImpl, Types, io, ui
from comfy_api.latest._api import versioned

ComfyAPI, ComfyAPISync = versioned("0.0.1", stable=True)
ComfyAPIAdapter_v0_0_1 = ComfyAPI

__all__ = ["IO", "UI", "ComfyAPI", "ComfyAPIAdapter_v0_0_1", "ComfyAPISync", "ComfyExtension",
           "Input", "InputImpl", "Types", "io", "ui"]
