"""Control-image preprocessors: edges for canny ControlNets, image channels as masks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import Tensor

if TYPE_CHECKING:
    import torch

CHANNELS = ("red", "green", "blue", "alpha")


def canny_edges(image: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """IMAGE ``[B, H, W, C]`` -> white-on-black edge IMAGE ``[B, H, W, 3]`` (values 0 or 1).

    OpenCV's Canny on the 8-bit RGB image (the gradient of the strongest channel),
    as the ControlNet authors' canny annotator does; ``low``/``high`` are its
    hysteresis thresholds as fractions of 255.
    """
    import cv2  # opencv-python-headless; imported here so the rest never needs it
    import numpy as np
    import torch

    from nodes.limits import check_image

    check_image(image, "image")
    pixels = image[..., :3].detach().float().cpu().clamp(0, 1).mul(255).round()
    pixels = pixels.to(torch.uint8).numpy()
    edges = [cv2.Canny(np.ascontiguousarray(p), low * 255.0, high * 255.0) for p in pixels]
    out = torch.from_numpy(np.stack(edges)).to(torch.float32) / 255.0
    return out[..., None].repeat(1, 1, 1, 3).to(image.device)


class Canny(Node):
    """Edge map of an image for canny ControlNets (OpenCV's Canny).

    Thresholds are fractions of 255: 0.4 / 0.8 are about the ControlNet
    authors' 100 / 200. Gradients above ``high`` start edges; edges continue
    through gradients above ``low``.
    """

    TYPE = "Canny"
    DISPLAY_NAME = "Canny"
    CATEGORY = "image/preprocessors"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    low_threshold: float = Input(0.4, min=0.01, max=0.99, step=0.01)
    high_threshold: float = Input(0.8, min=0.01, max=0.99, step=0.01)

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        low, high = inputs.get("low_threshold"), inputs.get("high_threshold")
        if low is not None and high is not None and low > high:
            return [("low_threshold", f"low_threshold ({low}) must not exceed "
                                      f"high_threshold ({high})")]
        return []

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        return (canny_edges(self.image, self.low_threshold, self.high_threshold),)


class ImageToMask(Node):
    """Use one channel of an image as a mask (white = 1), e.g. to drive inpainting."""

    TYPE = "ImageToMask"
    DISPLAY_NAME = "Convert Image to Mask"
    CATEGORY = "mask"
    OUTPUTS = (Output("MASK"),)

    image: Tensor = Input(type="IMAGE")
    channel: str = Input("red", choices=CHANNELS)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        if self.image.dim() != 4:
            raise ValueError(f"expected an IMAGE [B, H, W, C], got {tuple(self.image.shape)}")
        index = CHANNELS.index(self.channel)
        channels = self.image.shape[-1]
        if channels == 1 and index < 3:
            index = 0  # a greyscale image: red, green and blue are the same
        if index >= channels:
            raise ValueError(f"the image has {channels} channels, so no {self.channel} channel "
                             "(Load Image gives the alpha channel as its MASK output)")
        return (self.image[..., index].clone(),)


NODE_CLASSES = (Canny, ImageToMask)
