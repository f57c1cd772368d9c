"""Latents: empty latents, and the VAE between pixels and latents."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import Latent, Tensor, Vae, linked_downscale
from nodes.limits import FLOAT32, check_fits, check_image

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.vae_codec import Tiling

SD_LATENT_CHANNELS = 4
SD_DOWNSCALE = 8
#: the optional ``vae`` input of nodes that take sizes in image pixels
LATENT_VAE_HELP = ("The model's VAE, for its downscale; unlinked: the downscale the latent "
                   "knows (from a VAE or a sampler on a checkpoint with its VAE), else 8")


class EmptyLatentImage(Node):
    """A batch of zero latents: the start of text-to-image (the sampler adds the noise).

    Link a VAE to take its latent channels and downscale factor; without one,
    Stable Diffusion's (4 channels, 1/8 of the pixel size) are used, as in ComfyUI, and a
    sampler whose checkpoint's VAE scales otherwise remakes the empty latent for it (the
    image keeps the asked size).

    Keep the size near the one the model was trained at (Load Checkpoint's card:
    steerflow-shapes 64x64, SD 1.x 512, SDXL 1024). From pure noise a side well past it
    repeats or breaks the subjects, and the sampler warns past 2x; the built-in 64-px model
    already draws its shapes twice at 96 px. For a wider picture use MultiDiffusion
    (the panorama example) or sample at the native size and upscale (a hires fix).
    """

    TYPE = "EmptyLatentImage"
    DISPLAY_NAME = "Empty Latent Image"
    CATEGORY = "latent"
    OUTPUTS = (Output("LATENT"),)

    width: int = Input(512, min=8, max=16384, step=8)
    height: int = Input(512, min=8, max=16384, step=8)
    batch_size: int = Input(1, min=1, max=4096)
    vae: Vae | None = Input(type="VAE", optional=True)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        import torch

        channels = self.vae.latent_channels if self.vae else SD_LATENT_CHANNELS
        factor = self.vae.downscale if self.vae else SD_DOWNSCALE
        if self.width % factor or self.height % factor:
            raise ValueError(f"width and height must be multiples of {factor} "
                             f"(got {self.width}x{self.height})")
        shape = (self.batch_size, channels, self.height // factor, self.width // factor)
        check_fits(math.prod(shape) * FLOAT32, ctx.device,
                   f"{self.batch_size} latent(s) of {self.width}x{self.height} px",
                   "lower batch_size, width or height")
        samples = torch.zeros(shape, device=ctx.device)
        if self.vae:
            return (self.vae.latent(samples),)
        return (Latent(samples, assumed_downscale=SD_DOWNSCALE),)


def downscale_of(latent: Latent | None, vae: Vae | None, unet: object = None) -> int:
    """Image pixels per latent pixel, for a node that takes sizes in image pixels: the
    linked ``vae``'s, else the one ``latent`` knows (made by a VAE, or by a sampler on
    a checkpoint loaded with its VAE; assumed by an Empty Latent Image), else that of
    the VAE the checkpoint loader paired with ``unet``, else SD's 8 (ComfyUI's rule)."""
    if vae is not None:
        return vae.downscale
    known = latent is not None and (latent.downscale or latent.assumed_downscale)
    if known:
        return int(known)
    return (linked_downscale(unet) if unet is not None else None) or SD_DOWNSCALE


def warn_assumed_downscale(ctx: ExecutionContext, latent: Latent, vae: Vae) -> None:
    """Warn when an Empty Latent Image without its ``vae`` sized this latent for SD's 8x
    VAE and ``vae`` scales otherwise (a ComfyUI graph on the default model, say): the
    image comes out at another size than the one asked for."""
    assumed = latent.assumed_downscale
    if assumed is None or vae.downscale == assumed:
        return
    height, width = latent.samples.shape[-2:]
    ctx.warn(f"the latent was sized for a {assumed}x VAE (Empty Latent Image has no vae "
             f"input), but this VAE is {vae.downscale}x, so the image is "
             f"{width * vae.downscale}x{height * vae.downscale} instead of "
             f"{width * assumed}x{height * assumed}: link the checkpoint's VAE into Empty "
             "Latent Image's vae input")


def vae_crop(height: int, width: int, factor: int) -> tuple[int, int, int, int]:
    """``(top, left, h, w)``: the part of an image a VAE of downscale ``factor`` encodes,
    a multiple of it cut about the centre (as ComfyUI's VAE crops)."""
    h, w = height // factor * factor, width // factor * factor
    return (height - h) // 2, (width - w) // 2, h, w


def decode(vae: Vae, latents: torch.Tensor, tiling: Tiling | None = None) -> torch.Tensor:
    """Latents (UNet space) → IMAGE ``[B, H, W, C]`` in 0..1, as the pipelines postprocess.

    Large images are decoded image by image or in tiles when memory asks for it
    (:mod:`nodes.diffusion.vae_codec`); ``tiling`` asks for tiles of that size.
    """
    from nodes.diffusion.vae_codec import decode_raw

    image = decode_raw(vae, latents / vae.scaling_factor, tiling)
    if not bool(image.isfinite().all()):  # clamp would turn NaN into a black picture
        peak = float(latents.abs().amax()) if latents.numel() else 0.0
        raise ValueError(
            f"the VAE decoded NaN or infinite pixels from latents that reach |{peak:.3g}| "
            "(a VAE's latents stay within about ±100): look at where they came from (a "
            "Load Latent file, a latent math node, a sampler's warning)")
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float()


def encode(vae: Vae, image: torch.Tensor, tiling: Tiling | None = None) -> torch.Tensor:
    """IMAGE → latents (UNet space), using the posterior's mode so it is deterministic."""
    from nodes.diffusion.vae_codec import encode_raw

    check_image(image, "image to encode", (3, 4))  # RGB (alpha dropped)
    factor = vae.downscale
    top, left, h, w = vae_crop(image.shape[1], image.shape[2], factor)
    if h == 0 or w == 0:
        raise ValueError(f"image is smaller than the VAE's downscale factor {factor}")
    x = image[:, top:top + h, left:left + w, :3].permute(0, 3, 1, 2)
    return encode_raw(vae, x * 2 - 1, tiling).mode() * vae.scaling_factor


class VAEDecode(Node):
    """Decode latents into an image."""

    TYPE = "VAEDecode"
    DISPLAY_NAME = "VAE Decode"
    CATEGORY = "latent"
    OUTPUTS = (Output("IMAGE"),)

    samples: Latent = Input(type="LATENT")
    vae: Vae = Input(type="VAE")

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        warn_assumed_downscale(ctx, self.samples, self.vae)
        return (decode(self.vae.scaled_for(self.samples.scaling_factor), self.samples.samples),)


class VAEEncode(Node):
    """Encode an image into latents (cropped to a multiple of the VAE's downscale factor)."""

    TYPE = "VAEEncode"
    DISPLAY_NAME = "VAE Encode"
    CATEGORY = "latent"
    OUTPUTS = (Output("LATENT"),)

    pixels: Tensor = Input(type="IMAGE")
    vae: Vae = Input(type="VAE")

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        return (self.vae.latent(encode(self.vae, self.pixels)),)


class VAEDecodeTiled(Node):
    """Decode latents into an image in overlapping tiles, blended at their seams.

    Plain VAE Decode already switches to tiles when an image would not fit in memory;
    use this node to choose the tile size yourself (smaller tiles: less memory, more
    seams to blend, slower). ``overlap`` is capped at a quarter of the tile. The
    temporal inputs are ComfyUI's for video VAEs; image VAEs ignore them.
    """

    TYPE = "VAEDecodeTiled"
    DISPLAY_NAME = "VAE Decode (Tiled)"
    CATEGORY = "latent"
    OUTPUTS = (Output("IMAGE"),)

    samples: Latent = Input(type="LATENT")
    vae: Vae = Input(type="VAE")
    tile_size: int = Input(512, min=64, max=4096, step=32,
                           description="Tile side in pixels")
    overlap: int = Input(64, min=0, max=4096, step=32,
                         description="Pixels two neighbouring tiles share (≤ tile_size / 4)")
    temporal_size: int = Input(64, min=8, max=4096, step=4,
                               description="Video VAEs only (frames per chunk); ignored")
    temporal_overlap: int = Input(8, min=4, max=4096, step=4,
                                  description="Video VAEs only; ignored")

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        from nodes.diffusion.vae_codec import Tiling

        warn_assumed_downscale(ctx, self.samples, self.vae)
        return (decode(self.vae.scaled_for(self.samples.scaling_factor), self.samples.samples,
                       Tiling(self.tile_size, self.overlap)),)


class VAEEncodeTiled(Node):
    """Encode an image into latents in overlapping tiles (see VAE Decode (Tiled)).

    Plain VAE Encode already switches to tiles when an image would not fit in memory.
    """

    TYPE = "VAEEncodeTiled"
    DISPLAY_NAME = "VAE Encode (Tiled)"
    CATEGORY = "latent"
    OUTPUTS = (Output("LATENT"),)

    pixels: Tensor = Input(type="IMAGE")
    vae: Vae = Input(type="VAE")
    tile_size: int = Input(512, min=64, max=4096, step=64,
                           description="Tile side in pixels")
    overlap: int = Input(64, min=0, max=4096, step=32,
                         description="Pixels two neighbouring tiles share (≤ tile_size / 4)")
    temporal_size: int = Input(64, min=8, max=4096, step=4,
                               description="Video VAEs only (frames per chunk); ignored")
    temporal_overlap: int = Input(8, min=4, max=4096, step=4,
                                  description="Video VAEs only; ignored")

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        from nodes.diffusion.vae_codec import Tiling

        samples = encode(self.vae, self.pixels, Tiling(self.tile_size, self.overlap))
        return (self.vae.latent(samples),)


NODE_CLASSES = (EmptyLatentImage, VAEDecode, VAEEncode, VAEDecodeTiled, VAEEncodeTiled)
