"""``comfy_api.v0_0_3``: ComfyUI's versioned alias of :mod:`comfy_api.latest`."""

from comfy_api.latest import IO, UI, ComfyExtension, Input, InputImpl, Types, io, ui
from comfy_api.latest._api import versioned

ComfyAPI, ComfyAPISync = versioned("0.0.3", stable=False)
ComfyAPIAdapter_v0_0_3 = ComfyAPI

__all__ = ["IO", "UI", "ComfyAPI", "ComfyAPIAdapter_v0_0_3", "ComfyAPISync", "ComfyExtension",
           "Input", "InputImpl", "Types", "io", "ui"]
