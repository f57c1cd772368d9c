"""``comfy_api.v0_0_1``: ComfyUI's versioned alias of :mod:`comfy_api.latest`."""

from comfy_api.latest import IO, UI, ComfyExtension, Input, InputImpl, Types, io, ui
from comfy_api.latest._api import ComfyAPI_latest, sync_class


class ComfyAPIAdapter_v0_0_1(ComfyAPI_latest):
    VERSION = "0.0.1"
    STABLE = True


ComfyAPI = ComfyAPIAdapter_v0_0_1
ComfyAPISync = sync_class(ComfyAPIAdapter_v0_0_1)

__all__ = ["IO", "UI", "ComfyAPI", "ComfyAPISync", "ComfyExtension", "Input", "InputImpl",
           "Types", "io", "ui"]
