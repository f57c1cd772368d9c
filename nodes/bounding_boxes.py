"""Crop regions: ComfyUI's Bounding Box (``PrimitiveBoundingBox``), Crop Image
(``ImageCropV2``) and Crop Image to Mask (``ImageCropToMask``).

A ``BOUNDING_BOX`` is a dict ``{"x", "y", "width", "height"}`` in pixels, (x, y) its
top-left corner. ComfyUI's front end edits one in a box editor on Crop Image; in an API
prompt it is that dict as the input's value, or a link from a Bounding Box node.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, NodeResult, Output
from nodes.conditioning import MAX_RESOLUTION
from nodes.diffusion.handles import Tensor
from nodes.frontend_widgets import FrontEndWidgetNode
from nodes.limits import FLOAT32, check_fits, check_image

if TYPE_CHECKING:
    import torch

BOX_FIELDS = (("x", 0, 0), ("y", 0, 0), ("width", 512, 1), ("height", 512, 1))
"""Each key of a box, its default (ComfyUI's, for a key left out) and its minimum."""
DEFAULT_BOX = {key: default for key, default, _ in BOX_FIELDS}
MAX_CROP_PIXELS = 8192 * 8192  # Crop Image to Mask's padded crop, before its resize
HEX_COLOR = re.compile(r"#?([0-9a-fA-F]{6})([0-9a-fA-F]{2})?")


def check_box(value: Any) -> dict[str, int]:
    """A BOUNDING_BOX as ``{"x", "y", "width", "height"}`` of whole numbers within
    ComfyUI's bounds (x, y from 0; width, height from 1; all at most 16384); a key left
    out takes ComfyUI's default (0, 0, 512, 512). Raises ``ValueError`` naming the key."""
    if not isinstance(value, dict):
        raise ValueError("a bounding box must be an object {x, y, width, height}, got "
                         f"{type(value).__name__}")
    box = {}
    for key, default, low in BOX_FIELDS:
        number = value.get(key, default)
        if isinstance(number, float) and number.is_integer():
            number = int(number)
        if isinstance(number, bool) or not isinstance(number, int):
            raise ValueError(f"the bounding box's {key} must be a whole number, got "
                             f"{type(number).__name__}")
        if not low <= number <= MAX_RESOLUTION:
            raise ValueError(f"the bounding box's {key} must be {low} to {MAX_RESOLUTION}, "
                             f"got {number}")
        box[key] = number
    return box


class PrimitiveBoundingBox(Node):
    """A crop region for Crop Image: the ``width`` x ``height`` rectangle whose top-left
    corner is at (``x``, ``y``), in pixels."""

    TYPE = "PrimitiveBoundingBox"
    DISPLAY_NAME = "Bounding Box"
    CATEGORY = "utils/primitive"
    OUTPUTS = (Output("BOUNDING_BOX"),)

    x: int = Input(0, min=0, max=MAX_RESOLUTION)
    y: int = Input(0, min=0, max=MAX_RESOLUTION)
    width: int = Input(512, min=1, max=MAX_RESOLUTION)
    height: int = Input(512, min=1, max=MAX_RESOLUTION)

    def execute(self, ctx: ExecutionContext) -> tuple[dict[str, int]]:
        return ({"x": self.x, "y": self.y, "width": self.width, "height": self.height},)


def crop(image: torch.Tensor, box: dict[str, int]) -> torch.Tensor:
    """ComfyUI's crop: a corner past the image moves onto its last row or column, and a
    region running past the right or bottom edge is cut there."""
    height, width = image.shape[1:3]
    x, y = min(box["x"], width - 1), min(box["y"], height - 1)
    return image[:, y:y + box["height"], x:x + box["width"]].clone()


class ImageCropV2(FrontEndWidgetNode):
    """Cut the ``crop_region`` out of images (and show it). Link a Bounding Box node, or
    draw the region in ComfyUI's front end. As in ComfyUI, a corner past the image moves
    onto its last row or column, and a region past the right or bottom edge is cut there
    (the result is then smaller than the region)."""

    TYPE = "ImageCropV2"
    DISPLAY_NAME = "Crop Image"
    CATEGORY = "image/transform"
    OUTPUTS = (Output("IMAGE"),)
    FRONTEND_WIDGETS = {"crop_region": check_box}

    image: Tensor = Input(type="IMAGE")
    crop_region: dict = Input(type="BOUNDING_BOX",
                              description="x, y, width, height in pixels")

    @classmethod
    def schema(cls, env: Environment | None = None) -> dict[str, Any]:
        schema = super().schema(env)
        # ComfyUI's front end starts the box editor from this default and draws it in
        # its ImageCrop component; the engine still requires the value (no silent crop).
        schema["input"]["required"]["crop_region"][1].update(
            default=dict(DEFAULT_BOX), component="ImageCrop")
        return schema

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        from nodes.image import preview_images

        check_image(self.image, "image")
        out = crop(self.image, check_box(self.crop_region))
        return NodeResult((out,), preview_images(out, ctx).ui)


def parse_hex_color(value: Any, name: str) -> tuple[float, float, float]:
    """``"#RRGGBB"`` (or ``#RRGGBBAA``, its alpha ignored) as RGB in 0..1."""
    match = HEX_COLOR.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{name} must be a color as '#RRGGBB', got {str(value)[:40]!r}")
    digits = match[1]
    return tuple(int(digits[k:k + 2], 16) / 255.0 for k in (0, 2, 4))  # type: ignore[return-value]


class ImageCropToMask(Node):
    """Cut each image down to its mask's subject and resize it to ``width`` x ``height``
    (e.g. the centred, background-free input of image-to-3D models). The crop is the
    mask's bounding box grown to the output's aspect and by ``pad_factor``, centred on
    the subject; the subject is kept where the mask is (``grow_mask`` pixels grown, or
    shrunk when negative) and the rest becomes ``background``. As in ComfyUI, a mask
    that is white around a dark centre is taken as inverted, values under 0.05 count as
    0, and an empty mask keeps the whole image."""

    TYPE = "ImageCropToMask"
    DISPLAY_NAME = "Crop Image to Mask"
    CATEGORY = "image/transform"
    OUTPUTS = (Output("IMAGE", "images"),)

    images: Tensor = Input(type="IMAGE")
    masks: Tensor = Input(type="MASK")
    width: int = Input(1024, min=64, max=4096, step=8, description="Output width in pixels")
    height: int = Input(1024, min=64, max=4096, step=8,
                        description="Output height in pixels")
    pad_factor: float = Input(1.0, min=1.0, max=2.0, step=0.01,
                              description="Margin around the mask's box, as a multiplier")
    grow_mask: int = Input(0, min=-32, max=32, step=1,
                           description="Grow (or shrink, negative) the mask by this many "
                                       "pixels before cropping")
    background: str = Input("#000000", description="Color behind the subject, '#RRGGBB'")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        try:
            parse_hex_color(inputs.get("background"), "background")
        except ValueError as exc:
            return [("background", str(exc))]
        return []

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        import torch

        from nodes.diffusion.masking import as_mask4d
        from nodes.diffusion.resize import common_upscale

        check_image(self.images, "images")
        background = parse_hex_color(self.background, "background")
        images = self.images[..., :3].float()
        if images.shape[-1] == 1:
            images = images.expand(-1, -1, -1, 3)
        masks = as_mask4d(self.masks)[:, 0].float()
        batch, height, width = images.shape[:3]
        if 0 in masks.shape:
            raise ValueError(f"the masks are empty (shape {tuple(masks.shape)})")
        if masks.shape[0] == 1 and batch > 1:
            masks = masks.expand(batch, -1, -1)
        elif masks.shape[0] != batch:
            raise ValueError(f"masks has a batch of {masks.shape[0]} but images of {batch}: "
                             "give one mask, or one per image")
        if tuple(masks.shape[-2:]) != (height, width):
            masks = common_upscale(masks[:, None], width, height, "bilinear")[:, 0]
        out = [_crop_to_mask(images[k], masks[k].to(images.device), self.width, self.height,
                             self.pad_factor, self.grow_mask, background)
               for k in range(batch)]
        return (torch.cat(out).to(self.images.device),)


def _crop_to_mask(image: torch.Tensor, mask: torch.Tensor, out_w: int, out_h: int,
                  pad_factor: float, grow: int, background: tuple[float, float, float]
                  ) -> torch.Tensor:
    """One image ``[H, W, 3]`` and its mask ``[H, W]`` → ``[1, out_h, out_w, 3]``."""
    import torch
    import torch.nn.functional as F

    from nodes.diffusion.resize import common_upscale

    img = image.permute(2, 0, 1)[None].clamp(0, 1)
    m = mask[None, None].clamp(0, 1)
    h, w = m.shape[-2:]
    border = torch.cat([m[0, 0, 0], m[0, 0, -1], m[0, 0, :, 0], m[0, 0, :, -1]])
    centre = m[0, 0, h // 4:h - h // 4, w // 4:w - w // 4]
    if float(border.mean()) > 0.5 and float(centre.mean()) < 0.5:
        m = 1.0 - m  # white around a dark subject: an inverted mask
    if grow > 0:
        m = F.max_pool2d(m, kernel_size=2 * grow + 1, stride=1, padding=grow)
    elif grow < 0:
        m = 1.0 - F.max_pool2d(1.0 - m, kernel_size=1 - 2 * grow, stride=1, padding=-grow)
    m = torch.where(m < 0.05, torch.zeros_like(m), m)
    limit = max(out_w, out_h)
    if max(h, w) > limit:  # work at about the output's size
        scale = limit / max(h, w)
        w, h = max(1, int(w * scale)), max(1, int(h * scale))
        img, m = common_upscale(img, w, h, "lanczos"), common_upscale(m, w, h, "lanczos")
    (x1, y1, x2, y2), inverted = _crop_box(m[0, 0], out_w / out_h, pad_factor)
    if inverted:
        m = 1.0 - m
    crop_w, crop_h = x2 - x1, y2 - y1
    if crop_w * crop_h > MAX_CROP_PIXELS:
        raise ValueError(f"the crop around the mask would be {crop_w}x{crop_h} px, more than "
                         f"{MAX_CROP_PIXELS} pixels: choose a width:height closer to the "
                         "mask's shape, or a smaller pad_factor")
    check_fits(5 * crop_w * crop_h * FLOAT32, img.device, f"a {crop_w}x{crop_h} px crop",
               "choose a width:height closer to the mask's shape, or a smaller pad_factor")
    # Outside the image both the pixels and the mask are 0 (PIL's crop), so it is background.
    canvas = img.new_zeros((1, 3, crop_h, crop_w))
    alpha = img.new_zeros((1, 1, crop_h, crop_w))
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if sx1 < sx2 and sy1 < sy2:
        canvas[..., sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = img[..., sy1:sy2, sx1:sx2]
        alpha[..., sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = m[..., sy1:sy2, sx1:sx2]
    bg = torch.tensor(background, dtype=canvas.dtype, device=canvas.device).view(1, 3, 1, 1)
    composite = (canvas * alpha + bg * (1.0 - alpha)).clamp(0, 1)
    return common_upscale(composite, out_w, out_h, "lanczos").movedim(1, -1)


def _crop_box(mask: torch.Tensor, aspect: float, pad_factor: float
              ) -> tuple[tuple[int, int, int, int], bool]:
    """ComfyUI's crop around a mask ``[H, W]``: ((x1, y1, x2, y2), possibly past the
    edges; whether to invert the mask).

    The subject is where the 8-bit mask is over 204 (over 80 %); when nothing is, the
    inverted mask's subject is used (and the mask must be inverted), and with neither
    the whole image."""
    import torch

    level = (mask.clamp(0, 1) * 255.0).to(torch.uint8)
    subject, inverted = (level > 204).nonzero(), False
    if subject.numel() == 0:
        subject = ((255 - level) > 204).nonzero()
        inverted = subject.numel() > 0
    if subject.numel() == 0:
        return (0, 0, int(mask.shape[1]), int(mask.shape[0])), False
    y_min, x_min = subject.min(dim=0).values.tolist()
    y_max, x_max = subject.max(dim=0).values.tolist()
    centre_y, centre_x = (y_min + y_max) / 2.0, (x_min + x_max) / 2.0
    box_w, box_h = x_max - x_min + 1, y_max - y_min + 1
    if box_w / max(box_h, 1) >= aspect:  # grown to the output's aspect, on its long side
        crop_w, crop_h = int(box_w * pad_factor), int(box_w / aspect * pad_factor)
    else:
        crop_h, crop_w = int(box_h * pad_factor), int(box_h * aspect * pad_factor)
    # at least a pixel a side (ComfyUI's crop of a 1 px subject at a 64:1 aspect is empty)
    half_w, half_h = max(1, math.ceil(crop_w / 2)), max(1, math.ceil(crop_h / 2))
    x1, y1 = int(centre_x - half_w), int(centre_y - half_h)
    return (x1, y1, x1 + 2 * half_w, y1 + 2 * half_h), inverted


NODE_CLASSES = (PrimitiveBoundingBox, ImageCropV2, ImageCropToMask)
