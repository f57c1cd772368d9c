"""``comfy_api.input_impl``: ComfyUI's video classes, placeholders that refuse use."""

from comfy_api.latest import InputImpl

VideoFromFile = InputImpl.VideoFromFile
VideoFromComponents = InputImpl.VideoFromComponents

__all__ = ["VideoFromComponents", "VideoFromFile"]
