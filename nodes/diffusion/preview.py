"""Cheap live previews of latents during sampling (no VAE pass per step).

A preview is a map from a latent's channels to RGB. One fixed map only fits the VAE it
was fitted for (SD 1.x's community constants turn the 4× shapes VAE into coloured
confetti), so each VAE gets its own: ``latent_rgb_map`` encodes a few synthetic colour
images with the VAE once, fits ``[latent, latent², 1] @ W ≈ rgb`` (the channels, their
pairwise products and a bias) by least squares, and caches ``W`` for as long as the VAE
lives. The products matter: a linear map drew the default model's slate and grey
backgrounds lime and its beige pink (worst channel 41 of 255 off; 24 with them). The
sampler finds the VAE through ``link_vae`` (the checkpoint loader pairs each UNet with
its VAE); with no VAE known it falls back to SD 1.x's constants (4 channels) or a
normalised view.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image

# SD 1.x/2.x latent channels to RGB, the approximation the community uses for live
# previews; only the fallback when the model's VAE is unknown.
_SD_LATENT_RGB = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)

MAX_PREVIEW_SIZE = 512
#: The fit's training images: FIT_IMAGES of FIT_SIZE² pixels, FIT_BLOCK-pixel colour blocks,
#: and FIT_SOLIDS solid colours (half of them muted, near grey: backgrounds).
FIT_IMAGES = 24
FIT_SOLIDS = 64
FIT_SIZE = 64
FIT_BLOCK = 16

_lock = threading.Lock()
_maps: weakref.WeakKeyDictionary[Any, torch.Tensor] = weakref.WeakKeyDictionary()
_vae_of: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def link_vae(unet: Any, vae: Any) -> None:
    """Remember that ``unet``'s latents decode with ``vae`` (a diffusers AutoencoderKL)."""
    with _lock:
        _vae_of[unet] = vae


def linked_vae(unet: Any) -> Any | None:
    """The VAE ``link_vae`` paired with ``unet`` (None when it was loaded without one)."""
    with _lock:
        return _vae_of.get(unet)


def _fit_images(generator: torch.Generator) -> torch.Tensor:
    """``[FIT_IMAGES, 3, FIT_SIZE, FIT_SIZE]`` in [0, 1]: random colour blocks, solid colours
    (the RGB cube's corners and greys) and smooth gradients, so every hue and lightness is seen."""
    import torch

    n_blocks = FIT_SIZE // FIT_BLOCK
    blocks = torch.rand(FIT_IMAGES, 3, n_blocks, n_blocks, generator=generator)
    images = blocks.repeat_interleave(FIT_BLOCK, 2).repeat_interleave(FIT_BLOCK, 3)
    cube = [[r, g, b] for r in (0, 1) for g in (0, 1) for b in (0, 1)]
    greys = [[v, v, v] for v in (0.5, 0.25, 0.75)]
    solids = torch.tensor(cube + greys, dtype=torch.float32)
    k = min(len(solids), FIT_IMAGES // 2)
    images[:k] = solids[:k, :, None, None]
    ramp = torch.linspace(0, 1, FIT_SIZE)
    for i in range(k, min(k + 3, FIT_IMAGES)):  # one gradient per channel
        images[i] = 0.2
        images[i, i - k] = ramp[None, :]
    colours = torch.rand(FIT_SOLIDS, 3, generator=generator)
    colours[FIT_SOLIDS // 2:] = 0.5 + (colours[FIT_SOLIDS // 2:] - 0.5) * 0.6
    solid = colours[:, :, None, None].expand(-1, -1, FIT_SIZE, FIT_SIZE)
    return torch.cat([images, solid])


def _features(x: torch.Tensor) -> torch.Tensor:
    """``[N, C]`` latents → ``[N, C + C(C+1)/2 + 1]``: the channels, their products, 1."""
    import torch

    c = x.shape[1]
    upper = torch.triu_indices(c, c)
    products = (x[:, :, None] * x[:, None, :])[:, upper[0], upper[1]]
    return torch.cat([x, products, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)


def feature_count(channels: int) -> int:
    """The rows of a fitted map for ``channels``-channel latents."""
    return channels + channels * (channels + 1) // 2 + 1


def fit_latent_rgb(vae: Any) -> torch.Tensor:
    """A ``[feature_count(channels), 3]`` map from ``vae``'s scaled latents' features
    (:func:`_features`) to RGB."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    images = _fit_images(generator)
    param = next(vae.parameters())
    config = vae.config
    scale = float(getattr(config, "scaling_factor", 1.0) or 1.0)
    shift = float(getattr(config, "shift_factor", 0.0) or 0.0)
    with torch.no_grad():
        dist = vae.encode((images * 2 - 1).to(param.device, param.dtype)).latent_dist
        latents = ((dist.mean.float().cpu() - shift) * scale)  # the sampler's latent space
    down = FIT_SIZE // latents.shape[-1]
    target = F.avg_pool2d(images, down)  # each latent pixel's colour
    x = _features(latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])).double()
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)
    # a little ridge keeps the map sane for a channel the images barely move
    ridge = 1e-4 * torch.eye(x.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(x.T @ x + ridge, x.T @ y.double())
    return w.float()


def latent_rgb_map(vae: Any) -> torch.Tensor:
    """``vae``'s fitted map, fitted on first use and cached while the VAE lives."""
    with _lock:
        cached = _maps.get(vae)
    if cached is not None:
        return cached
    fitted = fit_latent_rgb(vae)
    with _lock:
        return _maps.setdefault(vae, fitted)


def _to_image(rgb: torch.Tensor) -> Image.Image:
    from PIL import Image

    image = Image.fromarray((rgb.clamp(0, 1).numpy() * 255).round().astype("uint8"))
    scale = max(1, min(8, MAX_PREVIEW_SIZE // max(image.size)))
    # smooth: a latent-size approximation enlarged as blocks reads as noise
    return image.resize((image.width * scale, image.height * scale), Image.BILINEAR)


def latent_preview(latents: torch.Tensor, family: str = "sd1", unet: Any = None,
                   vae: Any = None) -> Image.Image:
    """The first latent of a batch as an RGB image.

    ``vae`` (or the VAE ``link_vae`` paired with ``unet``) gives the fitted map; without
    one, SD 1.x's constants for 4 channels, else the first three channels normalised.
    ``family`` is kept for callers; the fitted map makes it unnecessary.
    """
    import torch

    if vae is None and unet is not None:
        vae = linked_vae(unet)
    x = latents[0].detach().float().cpu()
    if vae is not None:
        try:
            w = latent_rgb_map(vae)
        except Exception:  # a preview must never fail the run
            w = None
        if w is not None and w.shape[0] == feature_count(x.shape[0]):
            flat = _features(x.permute(1, 2, 0).reshape(-1, x.shape[0]))
            return _to_image((flat @ w).reshape(*x.shape[1:], 3))
    if x.shape[0] == len(_SD_LATENT_RGB):
        rgb = torch.einsum("chw,cr->hwr", x, torch.tensor(_SD_LATENT_RGB))
        return _to_image((rgb + 1) / 2)
    rgb = x[:3].permute(1, 2, 0)
    lo, hi = rgb.min(), rgb.max()
    return _to_image((rgb - lo) / (hi - lo + 1e-8))
