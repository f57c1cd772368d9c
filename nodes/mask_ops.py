"""Making and combining masks: ComfyUI's SolidMask, ImageColorToMask, CropMask,
MaskComposite and LatentCompositeMasked (its node ids, inputs and bounds).

A MASK is a float tensor ``[B, H, W]`` in 0..1 where 1 marks what to repaint (see
:mod:`nodes.masks`). Two batches combine when they are equal or one of them is 1
(that one is repeated); any other pair is an error.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from engine import ExecutionContext, Input, Node, Output
from nodes.conditioning import MAX_RESOLUTION
from nodes.diffusion.handles import Latent, Tensor, Vae
from nodes.latent import LATENT_VAE_HELP, downscale_of
from nodes.limits import FLOAT32, check_fits, check_image
from nodes.masks import as_mask3d

if TYPE_CHECKING:
    import torch

OPERATIONS = ("multiply", "add", "subtract", "and", "or", "xor")


def combine(dest: torch.Tensor, source: torch.Tensor, operation: str) -> torch.Tensor:
    """``dest`` and ``source`` (same shape) combined by one of :data:`OPERATIONS`. The
    logical ones read a value as set when it rounds to non-zero (above 0.5) and give
    0 or 1; the arithmetic ones are not clamped here."""
    if operation == "multiply":
        return dest * source
    if operation == "add":
        return dest + source
    if operation == "subtract":
        return dest - source
    a, b = dest.round() != 0, source.round() != 0
    if operation == "and":
        return (a & b).to(dest.dtype)
    if operation == "or":
        return (a | b).to(dest.dtype)
    if operation == "xor":
        return (a ^ b).to(dest.dtype)
    raise ValueError(f"unknown operation {operation!r}: use one of {', '.join(OPERATIONS)}")


def overlap(size: tuple[int, ...], offset: tuple[int, int], bound: tuple[int, ...]
            ) -> tuple[int, int]:
    """Height and width of a ``size`` (h, w) patch placed at ``offset`` (y, x) that lie
    inside a ``bound`` (h, w) canvas; 0 when it lies wholly outside."""
    (h, w), (y, x), (height, width) = size, offset, bound
    return max(min(h, height - y), 0), max(min(w, width - x), 0)


def common_batch(batches: dict[str, int]) -> int:
    """The batch that inputs' batches broadcast to: each must be 1 or one common size."""
    sizes = {n for n in batches.values() if n != 1}
    if len(sizes) > 1:
        listed = ", ".join(f"{name} {n}" for name, n in batches.items())
        raise ValueError(f"the batches do not match ({listed}): give each input a batch of "
                         "1 or the same batch as the others")
    return sizes.pop() if sizes else 1


class SolidMask(Node):
    """A mask of one value everywhere: 1 repaints the whole image, 0 nothing. A start
    for Combine Masks to add shapes to or cut them from."""

    TYPE = "SolidMask"
    DISPLAY_NAME = "Create Solid Mask"
    CATEGORY = "mask"
    OUTPUTS = (Output("MASK"),)

    value: float = Input(1.0, min=0.0, max=1.0, step=0.01)
    width: int = Input(512, min=1, max=MAX_RESOLUTION, step=1)
    height: int = Input(512, min=1, max=MAX_RESOLUTION, step=1)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        import torch

        # made on the CPU, as ComfyUI's (and Empty Image)
        check_fits(self.width * self.height * FLOAT32, "cpu",
                   f"a {self.width}x{self.height} mask", "lower width or height")
        return (torch.full((1, self.height, self.width), float(self.value)),)


class ImageColorToMask(Node):
    """1 where the image's pixel is exactly ``color`` (0xRRGGBB, each channel rounded to
    0..255), else 0: a mask from one colour of a segmentation map or a flat drawing.
    The alpha channel is ignored; a grey image counts as R = G = B."""

    TYPE = "ImageColorToMask"
    DISPLAY_NAME = "Convert Image Color to Mask"
    CATEGORY = "mask"
    OUTPUTS = (Output("MASK"),)

    image: Tensor = Input(type="IMAGE")
    color: int = Input(0, min=0, max=0xFFFFFF, step=1, display="color")

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        import torch

        check_image(self.image, "image")
        rgb = self.image[..., :3] if self.image.shape[-1] >= 3 else self.image.expand(
            -1, -1, -1, 3)
        levels = (rgb.float().clamp(0, 1) * 255).round().to(torch.int32)
        code = (levels[..., 0] << 16) | (levels[..., 1] << 8) | levels[..., 2]
        return ((code == self.color).float(),)


class CropMask(Node):
    """The ``width`` x ``height`` part of a mask whose top-left corner is at (x, y).

    A region running past the mask's right or bottom edge is cut there, so the result
    is smaller than asked; a corner outside the mask is an error."""

    TYPE = "CropMask"
    DISPLAY_NAME = "Crop Mask"
    CATEGORY = "mask"
    OUTPUTS = (Output("MASK"),)

    mask: Tensor = Input(type="MASK")
    x: int = Input(0, min=0, max=MAX_RESOLUTION, step=1)
    y: int = Input(0, min=0, max=MAX_RESOLUTION, step=1)
    width: int = Input(512, min=1, max=MAX_RESOLUTION, step=1)
    height: int = Input(512, min=1, max=MAX_RESOLUTION, step=1)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        mask = as_mask3d(self.mask)
        height, width = mask.shape[-2:]
        if self.x >= width or self.y >= height:
            raise ValueError(f"x, y = {self.x}, {self.y} lies outside the {width}x{height} "
                             "mask: nothing to crop (lower x or y)")
        return (mask[:, self.y:self.y + self.height, self.x:self.x + self.width].clone(),)


class MaskComposite(Node):
    """Combine ``source`` into ``destination`` with its top-left corner at (x, y).

    Where they overlap: ``multiply`` (keep the common part of soft masks), ``add``,
    ``subtract`` (cut ``source`` out), or the logical ``and``, ``or``, ``xor`` (values
    above 0.5 count as set; the result is 0 or 1). The rest keeps ``destination``, and
    the part of ``source`` past its edges is dropped. The result is clamped to 0..1
    and has the destination's size."""

    TYPE = "MaskComposite"
    DISPLAY_NAME = "Combine Masks"
    CATEGORY = "mask"
    OUTPUTS = (Output("MASK"),)

    destination: Tensor = Input(type="MASK")
    source: Tensor = Input(type="MASK")
    x: int = Input(0, min=0, max=MAX_RESOLUTION, step=1)
    y: int = Input(0, min=0, max=MAX_RESOLUTION, step=1)
    operation: str = Input("multiply", choices=OPERATIONS)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        from nodes.diffusion.masking import match_batch

        dest, source = as_mask3d(self.destination), as_mask3d(self.source)
        source = source.to(dest)
        batch = common_batch({"destination": dest.shape[0], "source": source.shape[0]})
        out = match_batch(dest, batch, "destination", "source").clone()
        source = match_batch(source, batch, "source", "destination")
        h, w = overlap(tuple(source.shape[-2:]), (self.y, self.x), tuple(out.shape[-2:]))
        region = out[:, self.y:self.y + h, self.x:self.x + w]
        region[...] = combine(region, source[:, :h, :w], self.operation)
        return (out.clamp(0, 1),)


class LatentCompositeMasked(Node):
    """Paste ``source`` into ``destination`` with its top-left corner at (x, y) image
    pixels (divided by the VAE's downscale: 8 unless the VAE is linked), blended by
    ``mask`` (1 = source; stretched to the source's size; none pastes all of it).

    ``resize_source`` first stretches the source to the destination's size. The part
    past the destination's edges is dropped. The result keeps the destination's noise
    mask and other settings."""

    TYPE = "LatentCompositeMasked"
    DISPLAY_NAME = "Latent Composite Masked"
    CATEGORY = "latent"
    OUTPUTS = (Output("LATENT"),)

    destination: Latent = Input(type="LATENT")
    source: Latent = Input(type="LATENT")
    x: int = Input(0, min=0, max=MAX_RESOLUTION, step=8)
    y: int = Input(0, min=0, max=MAX_RESOLUTION, step=8)
    resize_source: bool = Input(False)
    mask: Tensor | None = Input(type="MASK", optional=True)
    vae: Vae | None = Input(type="VAE", optional=True,
                            description=LATENT_VAE_HELP)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        import torch.nn.functional as F

        from nodes.diffusion.masking import as_mask4d, match_batch

        dest, source = self.destination.samples, self.source.samples
        for name, value in (("destination", dest), ("source", source)):
            if value.dim() != 4 or 0 in value.shape:
                raise ValueError(f"the {name} latent must be [B, C, h, w] and not empty, "
                                 f"got {tuple(value.shape)}")
        if source.shape[1] != dest.shape[1]:
            raise ValueError(f"the source has {source.shape[1]} channels but the destination "
                             f"has {dest.shape[1]}: both must come from the same VAE")
        source = source.to(dest)
        if self.resize_source and source.shape[-2:] != dest.shape[-2:]:
            source = F.interpolate(source, size=tuple(dest.shape[-2:]), mode="bilinear",
                                   align_corners=False)
        mask = None
        if self.mask is not None:
            mask = as_mask4d(self.mask).to(dest)
            if 0 in mask.shape:
                raise ValueError(f"the mask is empty (shape {tuple(self.mask.shape)})")
            if mask.shape[-2:] != source.shape[-2:]:
                mask = F.interpolate(mask, size=tuple(source.shape[-2:]), mode="bilinear",
                                     align_corners=False)
        batches = {"destination": dest.shape[0], "source": source.shape[0]}
        if mask is not None:
            batches["mask"] = mask.shape[0]
        batch = common_batch(batches)
        out = match_batch(dest, batch, "destination", "source").clone()
        source = match_batch(source, batch, "source", "destination")
        factor = downscale_of(self.destination, self.vae)
        x, y = self.x // factor, self.y // factor
        h, w = overlap(tuple(source.shape[-2:]), (y, x), tuple(out.shape[-2:]))
        region = out[:, :, y:y + h, x:x + w]
        pasted = source[:, :, :h, :w]
        if mask is None:
            region[...] = pasted
        else:
            weight = match_batch(mask, batch, "mask")[:, :, :h, :w]
            region[...] = region * (1 - weight) + pasted * weight
        return (replace(self.destination, samples=out),)


NODE_CLASSES = (SolidMask, ImageColorToMask, CropMask, MaskComposite, LatentCompositeMasked)
