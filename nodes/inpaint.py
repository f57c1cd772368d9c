"""Inpainting: latent noise masks and the masked-image input of inpainting models.

Three ways in, matching diffusers' ``StableDiffusionInpaintPipeline``:

* any model: ``VAEEncode`` → ``SetLatentNoiseMask`` → sampler. The unmasked region
  is put back after every step (exactly the pipeline with a 4-channel UNet).
* 9-channel inpainting models: ``InpaintModelConditioning`` encodes the image and
  the image with its masked pixels grey; the sampler feeds the UNet
  ``[latents, mask, masked image latents]`` every step (exactly the pipeline
  when ``noise_mask`` is off; on, the unmasked region is also put back).
* ``VAEEncodeForInpaint`` (ComfyUI's): the latent *is* the greyed image, with a
  grown noise mask; for full-denoise inpainting with either kind of model.

Greying pixels in 0..1 to 0.5 is the same as diffusers' ``image * (mask < 0.5)``
in -1..1, so the greyed latent is diffusers' ``masked_image_latents``.

Soft (feathered) masks: the 9-channel input always uses the mask binarised at 0.5
(diffusers and ComfyUI alike); a noise mask on a latent of the real image blends soft
values (ComfyUI; diffusers binarises: put a Threshold Mask in front to match it); the
noise mask of ``VAEEncodeForInpaint`` is binary (ComfyUI's ``round``), because its latent
is the greyed image and blending it back would tint the seam grey. Outpainting is
``ImagePadForOutpaint`` (grey canvas + mask) into any of the three.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import (
    Conditioning,
    DiffusionModel,
    InpaintCondition,
    Latent,
    Tensor,
    Vae,
)
from nodes.latent import encode, vae_crop
from nodes.masks import MAX_PIXELS, dilate

if TYPE_CHECKING:
    import torch


def fit_mask_to_image(mask: torch.Tensor, pixels: torch.Tensor, factor: int
                      ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(mask [B, h, w], pixels [B, h, w, C], dropped)``: the image cropped to a
    multiple of the VAE's ``factor`` about its centre, as ComfyUI's inpainting encoders
    crop it, and its mask cropped alike; ``dropped`` says the crop cut off masked pixels.

    A mask of another size is stretched to the image's (bilinear), as ComfyUI's
    inpainting encoders do: a graph that rescales the image after Load Image but takes
    the mask straight from it (ComfyUI's inpainting template) keeps working."""
    import torch

    from nodes.diffusion.masking import as_mask4d, match_batch

    mask4 = as_mask4d(mask)
    if pixels.dim() != 4:
        raise ValueError(f"an image must be [B, H, W, C], got {tuple(pixels.shape)}")
    if tuple(mask4.shape[-2:]) != tuple(pixels.shape[1:3]):
        mask4 = torch.nn.functional.interpolate(mask4, size=tuple(pixels.shape[1:3]),
                                                mode="bilinear")
    mask = match_batch(mask4[:, 0], pixels.shape[0], "mask", "image").to(pixels.device)
    top, left, h, w = vae_crop(pixels.shape[1], pixels.shape[2], factor)
    kept = mask[:, top:top + h, left:left + w]
    dropped = bool((mask > 0).sum() > (kept > 0).sum())
    return kept, pixels[:, top:top + h, left:left + w], dropped


def warn_cropped(ctx: ExecutionContext, pixels: torch.Tensor, factor: int) -> None:
    _, _, h, w = vae_crop(pixels.shape[1], pixels.shape[2], factor)
    ctx.warn(f"the image is {pixels.shape[2]}x{pixels.shape[1]}, not a multiple of the VAE's "
             f"downscale {factor}: it was cropped to {w}x{h} about its centre (as ComfyUI "
             "does), and part of the masked region with it; pad or crop the image to a "
             f"multiple of {factor} to keep all of it")


def grey_masked(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The image with the pixels where ``mask >= 0.5`` set to grey (0.5)."""
    from nodes.diffusion.masking import binarize

    h, w = mask.shape[-2:]
    pixels = pixels[:, :h, :w, :3]
    hard = binarize(mask)[..., None].to(pixels.dtype)
    return pixels * (1 - hard) + 0.5 * hard


def inpaint_condition(vae: Vae, pixels: torch.Tensor, mask: torch.Tensor,
                      masked_latents: torch.Tensor | None = None) -> InpaintCondition:
    """Mask (binary, latent size) and masked-image latents for a 9-channel UNet."""
    from nodes.diffusion.masking import binarize, mask_to_latent

    if masked_latents is None:
        masked_latents = encode(vae, grey_masked(pixels, mask))
    latent_mask = binarize(mask_to_latent(mask, tuple(masked_latents.shape[-2:])))
    return InpaintCondition(latent_mask.to(masked_latents.device), masked_latents)


class SetLatentNoiseMask(Node):
    """Only the masked region is repainted; the rest keeps the input latent.

    The mask may be at the latent or the image size; a mask of any other size is
    stretched over the latent (bilinear, as ComfyUI's sampler does), with a warning.
    After each step the input latent, noised to the next timestep, is put back where
    the mask is 0; soft mask values blend proportionally (diffusers binarises at 0.5:
    put a Threshold Mask in front to match it on a soft mask).
    """

    TYPE = "SetLatentNoiseMask"
    DISPLAY_NAME = "Set Latent Noise Mask"
    CATEGORY = "latent/inpaint"
    OUTPUTS = (Output("LATENT"),)

    samples: Latent = Input(type="LATENT")
    mask: Tensor = Input(type="MASK")

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        import torch.nn.functional as F

        from nodes.diffusion.masking import as_mask4d, mask_to_latent, match_batch

        latents = self.samples.samples
        mask = as_mask4d(self.mask)
        grid = tuple(latents.shape[-2:])
        try:
            fitted = mask_to_latent(mask, grid)
        except ValueError:  # ComfyUI takes any size and stretches it in the sampler
            ctx.warn(f"the {mask.shape[-1]}x{mask.shape[-2]} mask fits neither the latent "
                     f"({grid[1]}x{grid[0]}) nor its image size: it is stretched over the "
                     "latent, as ComfyUI does")
            mask = fitted = F.interpolate(mask.float(), size=grid, mode="bilinear")
        # Check now, not mid-sampling: the batch must fit the latent.
        match_batch(fitted, latents.shape[0], "mask")
        return (replace(self.samples, noise_mask=mask),)


class VAEEncodeForInpaint(Node):
    """Encode an image with its masked pixels grey; the grown mask becomes the noise mask.

    For full-denoise inpainting (the greyed region carries no content to keep).
    With a 9-channel inpainting model the latent also feeds its masked-image input.
    ``grow_mask_by`` enlarges the noise mask by about half that many pixels on each
    side, so the seam is repainted too. A soft mask (feathered, blurred) is rounded at
    0.5 first, as ComfyUI does: the greyed pixels must be repainted fully, or the grey
    latent would show through at the seam (for a soft seam use VAE Encode + Set Latent
    Noise Mask, or InpaintModelConditioning).
    """

    TYPE = "VAEEncodeForInpaint"
    DISPLAY_NAME = "VAE Encode (for Inpainting)"
    CATEGORY = "latent/inpaint"
    OUTPUTS = (Output("LATENT"),)

    pixels: Tensor = Input(type="IMAGE")
    vae: Vae = Input(type="VAE")
    mask: Tensor = Input(type="MASK")
    grow_mask_by: int = Input(6, min=0, max=64, step=1)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        from nodes.diffusion.masking import binarize

        mask, pixels, dropped = fit_mask_to_image(self.mask, self.pixels, self.vae.downscale)
        if dropped:
            warn_cropped(ctx, self.pixels, self.vae.downscale)
        hard = binarize(mask)  # exactly the greyed pixels: they must all be repainted
        grown = dilate(hard, self.grow_mask_by // 2).clamp(0, 1) if self.grow_mask_by else hard
        samples = encode(self.vae, grey_masked(pixels, mask))
        condition = inpaint_condition(self.vae, pixels, grown, masked_latents=samples)
        return (self.vae.latent(samples, noise_mask=grown[:, None], inpaint=condition),)


class InpaintModelConditioning(Node):
    """Prepare inpainting with a 9-channel inpainting model (diffusers' pipeline inputs).

    The latent is the image itself (so ``denoise`` < 1 starts from it, as the
    pipeline's ``strength``) and carries the mask and masked-image latents the
    UNet sees every step. ``noise_mask`` also keeps the unmasked region exactly
    (off reproduces diffusers; on is ComfyUI's default). The conditioning passes
    through unchanged (it is here for ComfyUI compatibility).
    """

    TYPE = "InpaintModelConditioning"
    DISPLAY_NAME = "Inpaint Model Conditioning"
    CATEGORY = "conditioning/inpaint"
    OUTPUTS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"),
               Output("LATENT", "latent"))

    positive: Conditioning = Input(type="CONDITIONING")
    negative: Conditioning = Input(type="CONDITIONING")
    vae: Vae = Input(type="VAE")
    pixels: Tensor = Input(type="IMAGE")
    mask: Tensor = Input(type="MASK")
    noise_mask: bool = Input(True, description="Also keep the unmasked region exactly")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning, Conditioning, Latent]:
        mask, pixels, dropped = fit_mask_to_image(self.mask, self.pixels, self.vae.downscale)
        if dropped:
            warn_cropped(ctx, self.pixels, self.vae.downscale)
        samples = encode(self.vae, pixels)
        condition = inpaint_condition(self.vae, pixels, mask)
        latent = self.vae.latent(samples, noise_mask=mask[:, None] if self.noise_mask else None,
                                 inpaint=condition)
        return self.positive, self.negative, latent


def outpaint_mask(height: int, width: int, left: int, top: int, right: int, bottom: int,
                  feathering: int) -> torch.Tensor:
    """ComfyUI's outpainting mask ``[H + top + bottom, W + left + right]``: 1 on the new
    border; inside the picture ``((f - d) / f)²`` within ``f = feathering`` pixels of a
    padded side (``d``: distance to it, counted from 0 at a top/left edge and from 1 at
    a bottom/right one, as ComfyUI counts), else 0. No feathering unless ``2f`` is below
    both sides of the picture."""
    import torch

    mask = torch.ones(height + top + bottom, width + left + right)
    inner = torch.zeros(height, width, dtype=torch.float64)
    if feathering > 0 and feathering * 2 < height and feathering * 2 < width:
        rows = torch.arange(height, dtype=torch.float64)[:, None]
        cols = torch.arange(width, dtype=torch.float64)[None, :]
        far_h, far_w = torch.full_like(rows, height), torch.full_like(cols, width)
        d = torch.minimum(
            torch.minimum(rows if top else far_h, height - rows if bottom else far_h),
            torch.minimum(cols if left else far_w, width - cols if right else far_w))
        rise = (feathering - d) / feathering
        inner = torch.where(d < feathering, rise * rise, torch.zeros_like(rise))
    mask[top:top + height, left:left + width] = inner.float()
    return mask


class ImagePadForOutpaint(Node):
    """Outpainting: put the picture on a larger mid-grey canvas and mask the new border
    (ComfyUI's node): the sampler then draws what lies beyond the picture's edges.

    Wiring: Load Image → this → VAE Encode (for Inpainting) (``pixels`` and ``mask``) →
    the sampler at denoise 1.0, with any model (a 4-channel one like the default
    steerflow-shapes, or a 9-channel inpainting model); or, for a 9-channel model,
    InpaintModelConditioning; or VAE Encode + Set Latent Noise Mask. Prompt the whole
    new picture (the model continues what the prompt and the kept pixels suggest).

    ``left``/``top``/``right``/``bottom`` (pixels, steps of 8) are the new border;
    adding up to about the picture's own size keeps the result near the size the model
    was trained at (the default model: 64x64 pictures → 64-128 px). ``feathering``
    softens the mask inside the picture over that many pixels from each padded side
    (value ``((f - d) / f)²``), only when ``2 x feathering`` is below the picture's width
    and height (ComfyUI's default 40 does nothing on a 64 px picture: use 8-16 there).
    VAE Encode (for Inpainting) rounds a soft mask (ComfyUI), so feathering only moves
    its seam by ~0.3 x feathering pixels; with Set Latent Noise Mask or
    InpaintModelConditioning's noise mask the old and new latents cross-fade there.
    The padded size must stay within 16384 pixels a side and be a multiple of the VAE's
    downscale for the encoders (it is when the picture's is).
    """

    TYPE = "ImagePadForOutpaint"
    DISPLAY_NAME = "Pad Image for Outpainting"
    CATEGORY = "image"
    OUTPUTS = (Output("IMAGE"), Output("MASK"))

    image: Tensor = Input(type="IMAGE")
    left: int = Input(0, min=0, max=MAX_PIXELS, step=8, description="New pixels on the left")
    top: int = Input(0, min=0, max=MAX_PIXELS, step=8, description="New pixels at the top")
    right: int = Input(0, min=0, max=MAX_PIXELS, step=8, description="New pixels on the right")
    bottom: int = Input(0, min=0, max=MAX_PIXELS, step=8,
                        description="New pixels at the bottom")
    feathering: int = Input(40, min=0, max=MAX_PIXELS, step=1,
                            description="Soften the mask this many pixels into the picture")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        for a, b in (("left", "right"), ("top", "bottom")):
            first, second = inputs.get(a), inputs.get(b)
            if isinstance(first, int) and isinstance(second, int) and first + second > MAX_PIXELS:
                problems.append((b, f"{a} + {b} is {first + second}: an image has at most "
                                    f"{MAX_PIXELS} pixels a side"))
        return problems

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        image = self.image
        if not isinstance(image, torch.Tensor) or image.dim() != 4:
            raise ValueError("image must be an IMAGE [B, H, W, C]")
        batch, height, width, channels = image.shape
        new_h, new_w = height + self.top + self.bottom, width + self.left + self.right
        if new_h > MAX_PIXELS or new_w > MAX_PIXELS:
            raise ValueError(f"the padded image would be {new_w}x{new_h}; an image has at "
                             f"most {MAX_PIXELS} pixels a side: pad less")
        canvas = torch.full((batch, new_h, new_w, channels), 0.5, dtype=torch.float32,
                            device=image.device)
        canvas[:, self.top:self.top + height, self.left:self.left + width] = image
        mask = outpaint_mask(height, width, self.left, self.top, self.right, self.bottom,
                             self.feathering)
        return canvas, mask[None].to(image.device)


class ImageCompositeMasked(Node):
    """Paste ``source`` onto ``destination`` at (x, y), weighted by ``mask`` (1 = source).

    After inpainting, pasting the decoded result back onto the original through the
    (blurred) mask keeps the unmasked pixels exactly: the VAE decoder otherwise
    shifts them a little, since it mixes neighbouring latents.
    """

    TYPE = "ImageCompositeMasked"
    DISPLAY_NAME = "Image Composite Masked"
    CATEGORY = "image"
    OUTPUTS = (Output("IMAGE"),)

    destination: Tensor = Input(type="IMAGE")
    source: Tensor = Input(type="IMAGE")
    x: int = Input(0, min=0, max=16384, step=1)
    y: int = Input(0, min=0, max=16384, step=1)
    resize_source: bool = Input(False)
    mask: Tensor | None = Input(type="MASK", optional=True)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        import torch
        import torch.nn.functional as F

        from nodes.diffusion.masking import as_mask4d, match_batch

        dest, source = self.destination, self.source.to(self.destination.device)
        if dest.dim() != 4 or source.dim() != 4 or dest.shape[-1] != source.shape[-1]:
            raise ValueError(f"destination {tuple(dest.shape)} and source "
                             f"{tuple(source.shape)} must be IMAGEs with the same channels")
        for name, image in (("destination", dest), ("source", source)):
            if 0 in image.shape[:3]:
                raise ValueError(f"the {name} is empty (shape {tuple(image.shape)}): it needs "
                                 "at least one image of at least 1x1 pixels")
        if self.resize_source:
            source = F.interpolate(source.movedim(-1, 1), size=tuple(dest.shape[1:3]),
                                   mode="bilinear", align_corners=False).movedim(1, -1)
        batch = max(dest.shape[0], source.shape[0])
        dest = match_batch(dest, batch, "destination", "source").clone()
        source = match_batch(source, batch, "source", "destination")
        h = max(min(source.shape[1], dest.shape[1] - self.y), 0)
        w = max(min(source.shape[2], dest.shape[2] - self.x), 0)
        if self.mask is None:
            weight = torch.ones(1, h, w, 1, device=dest.device)
        else:
            mask = as_mask4d(self.mask).to(dest.device)
            if tuple(mask.shape[-2:]) != tuple(source.shape[1:3]):
                mask = F.interpolate(mask, size=tuple(source.shape[1:3]), mode="bilinear",
                                     align_corners=False)
            weight = match_batch(mask, batch, "mask", "image")[:, 0, :h, :w, None]
        region = dest[:, self.y:self.y + h, self.x:self.x + w]
        dest[:, self.y:self.y + h, self.x:self.x + w] = (
            region * (1 - weight) + source[:, :h, :w] * weight)
        return (dest,)


class DifferentialDiffusion(Node):
    """Make a soft noise mask an amount of change per pixel: where the mask is 0.3 the
    picture is regenerated over only the last 30% of the steps, where it is 1 over all of
    them, where it is 0 never (Levin & Fried's Differential Diffusion, ComfyUI's node).

    Put it on the MODEL of an inpainting or img2img run whose latent has a soft mask
    (Set Latent Noise Mask, or InpaintModelConditioning with a feathered mask: Feather
    Mask, Mask Blur, or a gradient): edges blend without a seam. A hard 0/1 mask behaves
    as without it. ``strength`` below 1 mixes the per-step threshold with the soft mask.
    """

    TYPE = "DifferentialDiffusion"
    DISPLAY_NAME = "Differential Diffusion"
    CATEGORY = "_for_testing"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    strength: float = Input(1.0, min=0.0, max=1.0, step=0.0001, optional=True,
                            description="1: the per-step threshold alone; lower mixes in "
                            "the soft mask")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.differential_diffusion import DifferentialDiffusion as Extension

        return (self.model.with_extension(Extension(float(self.strength))),)


NODE_CLASSES = (SetLatentNoiseMask, VAEEncodeForInpaint, InpaintModelConditioning,
                DifferentialDiffusion, ImagePadForOutpaint, ImageCompositeMasked)
