"""Masks: load, threshold, grow, feather and blur (ComfyUI's node ids and inputs).

A MASK is a float tensor ``[B, H, W]`` in 0..1 where 1 marks what to repaint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, Output
from engine.environment import open_regular
from nodes.diffusion.handles import Tensor
from nodes.image import (
    LoadImage,
    annotated_image_exists,
    list_input_images,
    load_pillow,
    unreadable_image,
)
from nodes.image_decode import rgba_levels

if TYPE_CHECKING:
    import torch

MAX_PIXELS = 16384
CHANNELS = ("alpha", "red", "green", "blue")
_BAND_INDEX = {"red": 0, "green": 1, "blue": 2, "alpha": 3}


def as_mask3d(mask: torch.Tensor) -> torch.Tensor:
    """A MASK in any accepted layout as ``[B, H, W]`` float."""
    from nodes.diffusion.masking import as_mask4d

    return as_mask4d(mask)[:, 0]


def dilate(mask: torch.Tensor, pixels: int, tapered: bool = False) -> torch.Tensor:
    """Grey dilation (``pixels`` > 0) or erosion (< 0) of a ``[B, H, W]`` mask, one pixel
    per pass with a 3x3 footprint; ``tapered`` leaves out its corners (a plus), which
    rounds the grown corners."""
    import torch
    import torch.nn.functional as F

    x = mask[:, None]
    sign = 1.0 if pixels >= 0 else -1.0
    x = x * sign  # erosion is dilation of the negated mask
    # After H + W passes every pixel has seen the whole image (even with the plus-shaped
    # footprint), so further passes change nothing: skip them (expand can be 16384).
    for _ in range(min(abs(pixels), x.shape[-2] + x.shape[-1])):
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        if tapered:
            x = torch.stack([padded[..., 1:-1, 1:-1], padded[..., :-2, 1:-1],
                             padded[..., 2:, 1:-1], padded[..., 1:-1, :-2],
                             padded[..., 1:-1, 2:]]).amax(dim=0)
        else:
            x = F.max_pool2d(padded, kernel_size=3, stride=1)
    return (x * sign)[:, 0]


def gaussian_blur(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of a ``[B, H, W]`` mask; kernel 2·radius + 1, σ = radius / 2."""
    import torch
    import torch.nn.functional as F

    if radius <= 0:
        return mask
    sigma = radius / 2
    offsets = torch.arange(-radius, radius + 1, dtype=mask.dtype, device=mask.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(mask[:, None], (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0].clamp(0, 1)


def edge_ramp(size: int, start: int, end: int, device: torch.device) -> torch.Tensor:
    """A profile of length ``size`` rising linearly over the first ``start`` and falling
    over the last ``end`` entries (1 in between), as FeatherMask fades image edges."""
    import torch

    ramp = torch.ones(size, device=device)
    for count, flip in ((start, False), (end, True)):
        count = min(count, size)
        if count:
            rise = torch.arange(1, count + 1, device=device, dtype=ramp.dtype) / count
            part = rise.flip(0) if flip else rise
            sl = slice(size - count, size) if flip else slice(0, count)
            ramp[sl] = ramp[sl] * part
    return ramp


class LoadImageMask(Node):
    """Load one channel of an image in the input folder as a mask.

    ``alpha`` gives 1 - alpha (transparent pixels are repainted, as LoadImage's MASK);
    an image without transparency then gives an empty mask. A colour channel is
    used as it is (white = repaint).
    """

    TYPE = "LoadImageMask"
    DISPLAY_NAME = "Load Image (as Mask)"
    CATEGORY = "mask"
    OUTPUTS = (Output("MASK"),)

    image: str = Input(..., choices=list_input_images, also_accept=annotated_image_exists,
                       upload="image", description="A file in the input folder, or an "
                       "annotated name: 'clipspace/x.png [input]' (the mask editor's), "
                       "'x.png [output]'")
    channel: str = Input("alpha", choices=CHANNELS)

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return LoadImage.validate_inputs(inputs, env)

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        return LoadImage.fingerprint(inputs, env)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        import torch
        from PIL import Image, ImageOps

        role, path = LoadImage.locate(ctx.env, self.image)
        try:
            with open_regular(path, self.image) as fh, Image.open(fh) as img:
                load_pillow(img)  # a file cut short loads as in Load Image and ComfyUI
                img = ImageOps.exif_transpose(img)
                has_alpha = "A" in img.getbands() or "transparency" in img.info
                arr = rgba_levels(img)  # a 16-bit grey mask keeps its levels
        except FileNotFoundError:
            raise FileNotFoundError(f"image {self.image!r} not found in the {role} folder"
                                    ) from None
        except (OSError, Image.DecompressionBombError) as exc:
            raise unreadable_image(self.image, exc) from None
        mask = torch.from_numpy(arr[..., _BAND_INDEX[self.channel]].copy())[None]
        if self.channel == "alpha":
            mask = 1.0 - mask if has_alpha else torch.zeros_like(mask)
        return (mask.to(ctx.device),)


class MaskToImage(Node):
    """A mask as a grey image (to preview or save it)."""

    TYPE = "MaskToImage"
    DISPLAY_NAME = "Convert Mask to Image"
    CATEGORY = "mask"
    OUTPUTS = (Output("IMAGE"),)

    mask: Tensor = Input(type="MASK")

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        return (as_mask3d(self.mask)[..., None].expand(-1, -1, -1, 3).contiguous(),)


class InvertMask(Node):
    """1 - mask."""

    TYPE = "InvertMask"
    DISPLAY_NAME = "Invert Mask"
    CATEGORY = "mask"
    OUTPUTS = (Output("MASK"),)

    mask: Tensor = Input(type="MASK")

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        return (1.0 - as_mask3d(self.mask),)


class ThresholdMask(Node):
    """1 where the mask is above ``value``, else 0 (a hard edge from a soft mask)."""

    TYPE = "ThresholdMask"
    DISPLAY_NAME = "Threshold Mask"
    CATEGORY = "mask"
    OUTPUTS = (Output("MASK"),)

    mask: Tensor = Input(type="MASK")
    value: float = Input(0.5, min=0.0, max=1.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        mask = as_mask3d(self.mask)
        return ((mask > self.value).to(mask.dtype),)


class GrowMask(Node):
    """Grow (``expand`` > 0) or shrink (< 0) a mask by whole pixels.

    ``tapered_corners`` grows with a plus-shaped footprint, so corners round off.
    """

    TYPE = "GrowMask"
    DISPLAY_NAME = "Grow Mask"
    CATEGORY = "mask"
    OUTPUTS = (Output("MASK"),)

    mask: Tensor = Input(type="MASK")
    expand: int = Input(0, min=-MAX_PIXELS, max=MAX_PIXELS)
    tapered_corners: bool = Input(True)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        mask = as_mask3d(self.mask)
        return (dilate(mask, self.expand, self.tapered_corners).clamp(0, 1),)


class FeatherMask(Node):
    """Fade the mask linearly to 0 over the given number of pixels at each image edge."""

    TYPE = "FeatherMask"
    DISPLAY_NAME = "Feather Mask"
    CATEGORY = "mask"
    OUTPUTS = (Output("MASK"),)

    mask: Tensor = Input(type="MASK")
    left: int = Input(0, min=0, max=MAX_PIXELS)
    top: int = Input(0, min=0, max=MAX_PIXELS)
    right: int = Input(0, min=0, max=MAX_PIXELS)
    bottom: int = Input(0, min=0, max=MAX_PIXELS)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        mask = as_mask3d(self.mask)
        _, height, width = mask.shape
        rows = edge_ramp(height, self.top, self.bottom, mask.device)
        cols = edge_ramp(width, self.left, self.right, mask.device)
        return (mask * rows[:, None] * cols[None, :],)


class MaskBlur(Node):
    """Soften a mask's edges with a Gaussian blur (a feathered inpainting boundary).

    The sampler's noise-mask blend keeps soft values, so a blurred mask cross-fades
    new and kept content; make the blur span several latent pixels (8 image
    pixels each on SD) or nearest-neighbour resizing to the latent grid hides it.
    """

    TYPE = "MaskBlur"
    DISPLAY_NAME = "Blur Mask"
    CATEGORY = "mask"
    OUTPUTS = (Output("MASK"),)

    mask: Tensor = Input(type="MASK")
    radius: int = Input(8, min=0, max=1024, description="Kernel radius in pixels (σ = radius/2)")

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        return (gaussian_blur(as_mask3d(self.mask), self.radius),)


NODE_CLASSES = (LoadImageMask, MaskToImage, InvertMask, ThresholdMask, GrowMask,
                FeatherMask, MaskBlur)
