"""Cheap live previews of latents during sampling (no VAE pass)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image

# A linear map from SD 1.x/2.x latent channels to RGB, the approximation the
# community uses for live previews; good enough to see composition and color.
_SD_LATENT_RGB = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)

MAX_PREVIEW_SIZE = 512


def latent_preview(latents: torch.Tensor, family: str = "sd1") -> Image.Image:
    """The first latent of a batch as an RGB image."""
    import torch
    from PIL import Image

    x = latents[0].detach().float().cpu()
    if x.shape[0] == len(_SD_LATENT_RGB):
        rgb = torch.einsum("chw,cr->hwr", x, torch.tensor(_SD_LATENT_RGB))
        rgb = ((rgb + 1) / 2).clamp(0, 1)
    else:
        rgb = x[:3].permute(1, 2, 0)
        lo, hi = rgb.min(), rgb.max()
        rgb = (rgb - lo) / (hi - lo + 1e-8)
    image = Image.fromarray((rgb.numpy() * 255).round().astype("uint8"))
    scale = max(1, min(8, MAX_PREVIEW_SIZE // max(image.size)))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)
