"""Latents: empty latents, and the VAE between pixels and latents."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import Latent, Tensor, Vae

if TYPE_CHECKING:
    import torch

SD_LATENT_CHANNELS = 4
SD_DOWNSCALE = 8


class EmptyLatentImage(Node):
    """A batch of zero latents: the start of text-to-image (the sampler adds the noise).

    Link a VAE to take its latent channels and downscale factor; without one,
    Stable Diffusion's (4 channels, 1/8 of the pixel size) are used.
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
        return (Latent(torch.zeros(shape, device=ctx.device)),)


def decode(vae: Vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents (UNet space) → IMAGE ``[B, H, W, C]`` in 0..1, as the pipelines postprocess."""
    import torch

    model = vae.vae
    with torch.no_grad():
        x = latents.to(device=model.device, dtype=model.dtype) / vae.scaling_factor
        image = model.decode(x, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float()


def encode(vae: Vae, image: torch.Tensor) -> torch.Tensor:
    """IMAGE → latents (UNet space), using the posterior's mode so it is deterministic."""
    import torch

    model = vae.vae
    factor = vae.downscale
    h, w = image.shape[1] // factor * factor, image.shape[2] // factor * factor
    if h == 0 or w == 0:
        raise ValueError(f"image is smaller than the VAE's downscale factor {factor}")
    with torch.no_grad():
        x = image[:, :h, :w, :3].permute(0, 3, 1, 2).to(device=model.device, dtype=model.dtype)
        posterior = model.encode(x * 2 - 1).latent_dist
        return posterior.mode() * vae.scaling_factor


class VAEDecode(Node):
    """Decode latents into an image."""

    TYPE = "VAEDecode"
    DISPLAY_NAME = "VAE Decode"
    CATEGORY = "latent"
    OUTPUTS = (Output("IMAGE"),)

    samples: Latent = Input(type="LATENT")
    vae: Vae = Input(type="VAE")

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        return (decode(self.vae, self.samples.samples),)


class VAEEncode(Node):
    """Encode an image into latents (cropped to a multiple of the VAE's downscale factor)."""

    TYPE = "VAEEncode"
    DISPLAY_NAME = "VAE Encode"
    CATEGORY = "latent"
    OUTPUTS = (Output("LATENT"),)

    pixels: Tensor = Input(type="IMAGE")
    vae: Vae = Input(type="VAE")

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        return (Latent(encode(self.vae, self.pixels)),)


NODE_CLASSES = (EmptyLatentImage, VAEDecode, VAEEncode)
