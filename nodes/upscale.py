"""Resizing and compositing: ComfyUI's Upscale Latent (By), Upscale Image (By), Scale
Image to Total Pixels, Latent Composite and Empty Image, with its names, inputs, widget
order and semantics (``common_upscale``: :mod:`nodes.diffusion.resize`)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.conditioning import MAX_RESOLUTION
from nodes.diffusion.handles import Latent, Tensor, Vae
from nodes.latent import LATENT_VAE_HELP, downscale_of
from nodes.limits import FLOAT32, check_fits, check_image, check_latent

if TYPE_CHECKING:
    import torch

LATENT_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
IMAGE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROPS = ("disabled", "center")
MAX_SCALE = 8.0  # ComfyUI's bound on scale_by
MIN_DOWNSCALE = 4  # the smallest VAE downscale among Steerflow's models (steerflow-shapes)


def _check_size(width: int, height: int, what: str) -> None:
    """Refuse results past ComfyUI's MAX_RESOLUTION (memory, not taste, sets the bound)."""
    if width > MAX_RESOLUTION or height > MAX_RESOLUTION:
        raise ValueError(f"the {what} would be {width}x{height} px, past the maximum "
                         f"{MAX_RESOLUTION}: choose a smaller size or scale")


def _check_latent_fits(samples: Latent, width: int, height: int, method: str) -> None:
    """Refuse a resized latent batch (and its resized noise mask) that cannot fit."""
    latents = samples.samples
    batch, channels = latents.shape[0], latents.shape[1]
    # the result and one copy; bislerp's slerp holds about ten result-sized temporaries
    copies = 12 if method == "bislerp" else 2
    check_fits(batch * (copies * channels + 2) * height * width * FLOAT32, latents.device,
               f"resizing {batch} latent(s) to {width}x{height} latent pixels",
               "use a smaller size or scale, or a smaller batch")


class LatentUpscale(Node):
    """Resize latents to ``width`` x ``height`` image pixels (the hires-fix step: upscale,
    then sample again at denoise ≈ 0.5). 0 for one side keeps the aspect ratio; 0 for both
    leaves the latent alone; sides under 64 px are raised to 64, as in ComfyUI.
    ``crop`` center cuts to the new aspect ratio first instead of stretching.
    ``bislerp`` keeps latent vectors' lengths (often cleaner than bilinear at 2x);
    ``nearest-exact`` is the sharpest. Pixel sizes use the linked VAE's downscale, else
    the one the latent knows (from VAE Encode, or a sampler on a checkpoint loaded with
    its VAE: 4 on steerflow-shapes), else SD's 8. A noise mask is resized along.
    """

    TYPE = "LatentUpscale"
    DISPLAY_NAME = "Upscale Latent"
    CATEGORY = "latent"
    OUTPUTS = (Output("LATENT"),)

    samples: Latent = Input(type="LATENT")
    upscale_method: str = Input("nearest-exact", choices=LATENT_METHODS)
    width: int = Input(512, min=0, max=MAX_RESOLUTION, step=8)
    height: int = Input(512, min=0, max=MAX_RESOLUTION, step=8)
    crop: str = Input("disabled", choices=CROPS)
    vae: Vae | None = Input(type="VAE", optional=True,
                            description=LATENT_VAE_HELP)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        from nodes.diffusion.resize import resize_latent

        if self.width == 0 and self.height == 0:
            return (self.samples,)
        check_latent(self.samples.samples, "samples")
        factor = downscale_of(self.samples, self.vae)
        h, w = self.samples.samples.shape[-2:]
        width, height = self.width, self.height
        if width == 0:
            height = max(64, height)
            width = max(64, round(w * height / h))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(h * width / w))
        else:
            width, height = max(64, width), max(64, height)
        _check_size(width, height, "upscaled latent's image")
        _check_latent_fits(self.samples, width // factor, height // factor,
                           self.upscale_method)
        return (resize_latent(self.samples, width // factor, height // factor,
                              self.upscale_method, self.crop),)


class LatentUpscaleBy(Node):
    """Resize latents by a factor (1.5: a 64 px image's latent becomes 96 px), rounding
    each side to whole latent pixels. See Upscale Latent for the methods."""

    TYPE = "LatentUpscaleBy"
    DISPLAY_NAME = "Upscale Latent By"
    CATEGORY = "latent"
    OUTPUTS = (Output("LATENT"),)

    samples: Latent = Input(type="LATENT")
    upscale_method: str = Input("nearest-exact", choices=LATENT_METHODS)
    scale_by: float = Input(1.5, min=0.01, max=MAX_SCALE, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        from nodes.diffusion.resize import resize_latent

        check_latent(self.samples.samples, "samples")
        h, w = self.samples.samples.shape[-2:]
        width, height = round(w * self.scale_by), round(h * self.scale_by)
        if width < 1 or height < 1:
            raise ValueError(f"scaling a {w}x{h} latent by {self.scale_by} leaves no pixels: "
                             "use a larger scale_by")
        # No VAE here: bound the latent so that even at the smallest downscale a Steerflow
        # model has (4, steerflow-shapes) its image stays within MAX_RESOLUTION.
        if max(width, height) > MAX_RESOLUTION // MIN_DOWNSCALE:
            raise ValueError(f"the upscaled latent would be {width}x{height}, past "
                             f"{MAX_RESOLUTION // MIN_DOWNSCALE} latent pixels a side (an "
                             f"image past {MAX_RESOLUTION} px): use a smaller scale_by")
        _check_latent_fits(self.samples, width, height, self.upscale_method)
        return (resize_latent(self.samples, width, height, self.upscale_method),)


def _scale_image(image: torch.Tensor, width: int, height: int, method: str,
                 crop: str = "disabled") -> torch.Tensor:
    from nodes.diffusion.resize import common_upscale

    check_image(image, "image")
    _check_size(width, height, "image")
    batch, channels = image.shape[0], image.shape[-1]
    # the result and the channels-first copy it is resized into
    check_fits(2 * batch * height * width * channels * FLOAT32, image.device,
               f"resizing {batch} image(s) to {width}x{height} px",
               "use a smaller size or scale, or a smaller batch")
    return common_upscale(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


class ImageScale(Node):
    """Resize an image to ``width`` x ``height``. 0 for one side keeps the aspect ratio;
    0 for both returns the image unchanged. ``crop`` center cuts to the new aspect ratio
    first. ``lanczos`` is the sharpest downscaler (PIL, 8-bit); ``area`` averages, good
    for shrinking; ``nearest-exact`` keeps hard edges (masks, pixel art)."""

    TYPE = "ImageScale"
    DISPLAY_NAME = "Upscale Image"
    CATEGORY = "image/upscaling"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    upscale_method: str = Input("nearest-exact", choices=IMAGE_METHODS)
    width: int = Input(512, min=0, max=MAX_RESOLUTION, step=1)
    height: int = Input(512, min=0, max=MAX_RESOLUTION, step=1)
    crop: str = Input("disabled", choices=CROPS)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        if self.width == 0 and self.height == 0:
            return (self.image,)
        check_image(self.image, "image")
        h, w = self.image.shape[1:3]
        width, height = self.width, self.height
        if width == 0:
            width = max(1, round(w * height / h))
        elif height == 0:
            height = max(1, round(h * width / w))
        return (_scale_image(self.image, width, height, self.upscale_method, self.crop),)


class ImageScaleBy(Node):
    """Resize an image by a factor, rounding each side to whole pixels (see Upscale Image
    for the methods)."""

    TYPE = "ImageScaleBy"
    DISPLAY_NAME = "Upscale Image By"
    CATEGORY = "image/upscaling"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    upscale_method: str = Input("nearest-exact", choices=IMAGE_METHODS)
    scale_by: float = Input(1.0, min=0.01, max=MAX_SCALE, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        check_image(self.image, "image")
        h, w = self.image.shape[1:3]
        width, height = round(w * self.scale_by), round(h * self.scale_by)
        if width < 1 or height < 1:
            raise ValueError(f"scaling a {w}x{h} image by {self.scale_by} leaves no pixels: "
                             "use a larger scale_by")
        return (_scale_image(self.image, width, height, self.upscale_method),)


class ImageScaleToTotalPixels(Node):
    """Resize an image, keeping its aspect ratio, to about ``megapixels`` × 1024² pixels
    (1.0: 1024x1024 for a square). ``resolution_steps`` rounds each side to a multiple
    (8 or 64 suits a VAE; 1 is plain rounding, the default of older ComfyUI files)."""

    TYPE = "ImageScaleToTotalPixels"
    DISPLAY_NAME = "Scale Image to Total Pixels"
    CATEGORY = "image/upscaling"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    upscale_method: str = Input("nearest-exact", choices=IMAGE_METHODS)
    megapixels: float = Input(1.0, min=0.01, max=16.0, step=0.01)
    resolution_steps: int = Input(1, min=1, max=256)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        check_image(self.image, "image")
        h, w = self.image.shape[1:3]
        scale = math.sqrt(int(self.megapixels * 1024 * 1024) / (w * h))
        step = self.resolution_steps
        width, height = round(w * scale / step) * step, round(h * scale / step) * step
        if width < 1 or height < 1:
            raise ValueError(f"{self.megapixels} megapixels in steps of {step} leaves no "
                             f"pixels for a {w}x{h} image: use smaller resolution_steps")
        return (_scale_image(self.image, width, height, self.upscale_method),)


class LatentComposite(Node):
    """Paste ``samples_from`` into ``samples_to`` with its top-left corner at (x, y) image
    pixels (divided by the VAE's downscale, 8 unless the VAE is linked; the part past the
    edges is dropped). ``feather`` (pixels) ramps the pasted latent's inner edges linearly
    over that width so the seam blends; edges on the border of ``samples_to`` stay hard.
    The result keeps ``samples_to``'s noise mask."""

    TYPE = "LatentComposite"
    DISPLAY_NAME = "Latent Composite"
    CATEGORY = "latent"
    OUTPUTS = (Output("LATENT"),)

    samples_to: Latent = Input(type="LATENT")
    samples_from: Latent = Input(type="LATENT")
    x: int = Input(0, min=0, max=MAX_RESOLUTION, step=8)
    y: int = Input(0, min=0, max=MAX_RESOLUTION, step=8)
    feather: int = Input(0, min=0, max=MAX_RESOLUTION, step=8)
    vae: Vae | None = Input(type="VAE", optional=True,
                            description=LATENT_VAE_HELP)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        import torch

        factor = downscale_of(self.samples_to, self.vae)
        x, y, feather = self.x // factor, self.y // factor, self.feather // factor
        dest, src = self.samples_to.samples, self.samples_from.samples
        check_latent(dest, "samples_to")
        check_latent(src, "samples_from")
        if src.shape[1] != dest.shape[1]:
            raise ValueError(f"samples_from has {src.shape[1]} channels but samples_to has "
                             f"{dest.shape[1]}: both must come from the same VAE")
        if src.shape[0] not in (1, dest.shape[0]):
            raise ValueError(f"samples_from has a batch of {src.shape[0]}, samples_to of "
                             f"{dest.shape[0]}: use equal batches or a batch of 1")
        H, W = dest.shape[-2:]
        if x >= W or y >= H:
            # ComfyUI pastes nothing and goes on (a workflow made for a larger canvas
            # still runs); said, not silent
            if ctx is not None:
                ctx.warn(f"Latent Composite: x, y = {self.x}, {self.y} px lies outside "
                         f"samples_to ({W * factor}x{H * factor} px): nothing was pasted")
            return (replace(self.samples_to, samples=dest.clone(), extension_results=()),)
        src = src[..., : H - y, : W - x].to(dest)
        h, w = src.shape[-2:]
        out = dest.clone()
        region = out[..., y:y + h, x:x + w]
        if feather == 0:
            region[...] = src
        else:
            mask = torch.ones((1, 1, h, w), dtype=dest.dtype, device=dest.device)
            for t in range(min(feather, max(h, w))):
                ramp = (t + 1) / feather
                # Only edges inside samples_to blend; one on its border has nothing to meet.
                # A feather wider than the pasted latent ramps only the rows/columns it has.
                if y != 0 and t < h:
                    mask[..., t, :] *= ramp
                if y + h < H and t < h:
                    mask[..., h - 1 - t, :] *= ramp
                if x != 0 and t < w:
                    mask[..., :, t] *= ramp
                if x + w < W and t < w:
                    mask[..., :, w - 1 - t] *= ramp
            region[...] = src * mask + region * (1 - mask)
        return (replace(self.samples_to, samples=out, extension_results=()),)


class EmptyImage(Node):
    """A batch of images filled with one colour (``color`` as 0xRRGGBB: 0 black,
    16777215 white) — a canvas for outpainting, compositing or a plain img2img start."""

    TYPE = "EmptyImage"
    DISPLAY_NAME = "Empty Image"
    CATEGORY = "image"
    OUTPUTS = (Output("IMAGE"),)

    width: int = Input(512, min=1, max=MAX_RESOLUTION, step=1)
    height: int = Input(512, min=1, max=MAX_RESOLUTION, step=1)
    batch_size: int = Input(1, min=1, max=4096)
    color: int = Input(0, min=0, max=0xFFFFFF, step=1, display="color")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        w, h, b = (inputs.get(k) for k in ("width", "height", "batch_size"))
        if all(isinstance(v, int) for v in (w, h, b)) and w * h * b * 3 > 2**31:
            return [("batch_size", f"{b} images of {w}x{h} would take "
                                   f"{w * h * b * 12 / 2**30:.0f} GiB: use a smaller batch")]
        return []

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        import torch

        # made on the CPU (as ComfyUI's), whatever the run's device
        check_fits(self.batch_size * self.height * self.width * 3 * FLOAT32, "cpu",
                   f"{self.batch_size} image(s) of {self.width}x{self.height} px",
                   "lower batch_size, width or height")
        rgb = [((self.color >> shift) & 0xFF) / 0xFF for shift in (16, 8, 0)]
        colour = torch.tensor(rgb, dtype=torch.float32)
        return (colour.expand(self.batch_size, self.height, self.width, 3).clone(),)


NODE_CLASSES = (LatentUpscale, LatentUpscaleBy, ImageScale, ImageScaleBy,
                ImageScaleToTotalPixels, LatentComposite, EmptyImage)
