"""``comfy_api.input``: the value types (``ImageInput``, ...) for type hints."""

from comfy_api.latest import Input

ImageInput = Input.Image
MaskInput = Input.Mask
LatentInput = Input.Latent
AudioInput = Input.Audio
VideoInput = Input.Video

__all__ = ["AudioInput", "ImageInput", "LatentInput", "MaskInput", "VideoInput"]
