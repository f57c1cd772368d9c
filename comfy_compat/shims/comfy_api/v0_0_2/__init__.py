"""``comfy_api.v0_0_2``: ComfyUI's versioned alias of :mod:`comfy_api.latest`."""

from comfy_api.latest import IO, UI, ComfyExtension, Input, InputImpl, Types, io, ui
from comfy_api.latest._api import ComfyAPI_latest, sync_class


class ComfyAPIAdapter_v0_0_2(ComfyAPI_latest):
    VERSION = "0.0.2"
    STABLE = False


ComfyAPI = ComfyAPIAdapter_v0_0_2
ComfyAPISync = sync_class(ComfyAPIAdapter_v0_0_2)

__all__ = ["IO", "UI", "ComfyAPI", "ComfyAPISync", "ComfyExtension", "Input", "InputImpl",
           "Types", "io", "ui"]
