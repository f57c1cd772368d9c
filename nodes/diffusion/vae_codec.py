"""The VAE between pixels and latents, whole, one image at a time, or in tiles.

A VAE's memory grows with the image: decoding a 1024x1024 image with Stable
Diffusion's VAE holds about 4 GB of activations in float32, a 4096x4096 one
about 65 GB. Every decode and encode of Steerflow goes through this module,
which estimates the peak from the VAE's config and, when it would not fit in
half of the memory free on the device, decodes one image of the batch at a
time and, if that is still too much, in overlapping tiles blended at their
seams (diffusers' ``tiled_decode`` / ``tiled_encode``). Sizes that fit are
decoded whole, exactly as the pipelines do. The tiled nodes
(``VAEDecodeTiled``/``VAEEncodeTiled``) ask for tiles of a given size instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Peak float values held per pixel and per channel at full resolution, measured on
#: SD's VAE in float32 (decode 1024² → 3.9 GB: ~4 values of the 256-channel map at full
#: resolution per pixel; encode 512² → 0.66 GB: ~5 of the 128-channel one).
DECODE_VALUES_PER_CHANNEL = 4.5
ENCODE_VALUES_PER_CHANNEL = 5.5
#: The share of the free memory one decode or encode may plan to use.
MEMORY_SHARE = 0.5
#: ComfyUI's tiled nodes' defaults.
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64


@dataclass(frozen=True)
class Tiling:
    """Tiles of ``tile`` pixels overlapping by ``overlap`` pixels (at most a quarter tile)."""

    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP


@dataclass(frozen=True)
class Plan:
    """How one decode or encode runs: ``sliced`` = one image at a time."""

    sliced: bool = False
    tiling: Tiling | None = None


def available_bytes(device: Any) -> int:
    """Memory free on ``device`` now (CUDA: free device memory plus what torch has cached
    unused; CPU: MemAvailable)."""
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # torch's caching allocator reuses what it reserved but no tensor holds
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 << 30  # not Linux: assume a modest machine


def _full_res_channels(model: Any, mode: str) -> int:
    channels = list(getattr(model.config, "block_out_channels", [128]))
    # The decoder reaches full resolution with the second level's channels (its last
    # upsampler), the encoder leaves it with the first level's.
    return max(channels[:2]) if mode == "decode" else channels[0]


def estimate_bytes(model: Any, height: int, width: int, batch: int, mode: str) -> int:
    """Peak activation memory of decoding (``mode="decode"``) or encoding an image batch of
    ``height`` x ``width`` pixels with the AutoencoderKL ``model``."""
    per_channel = DECODE_VALUES_PER_CHANNEL if mode == "decode" else ENCODE_VALUES_PER_CHANNEL
    itemsize = getattr(model.dtype, "itemsize", 4)
    values = per_channel * _full_res_channels(model, mode) * height * width * batch
    return int(values * itemsize)


def plan(model: Any, height: int, width: int, batch: int, mode: str,
         tiling: Tiling | None = None, budget: int | None = None) -> Plan:
    """Choose how to run: whole, image by image, or in tiles (``tiling`` forces tiles)."""
    if not hasattr(model, "tiled_decode"):  # a VAE without diffusers' tiling: run it whole
        return Plan()
    if tiling is not None:
        return Plan(sliced=batch > 1, tiling=tiling)
    if budget is None:
        budget = int(available_bytes(model.device) * MEMORY_SHARE)
    if estimate_bytes(model, height, width, batch, mode) <= budget:
        return Plan()
    if estimate_bytes(model, height, width, 1, mode) <= budget:
        return Plan(sliced=batch > 1)
    tile = DEFAULT_TILE
    while tile > 64 and estimate_bytes(model, tile, tile, 1, mode) > budget:
        tile //= 2
    return Plan(sliced=batch > 1, tiling=Tiling(tile, min(DEFAULT_OVERLAP, tile // 4)))


@contextlib.contextmanager
def _configured(model: Any, run: Plan, downscale: int) -> Iterator[None]:
    """Set diffusers' slicing and tiling attributes for one call; restore them after."""
    names = ("use_slicing", "use_tiling", "tile_sample_min_size", "tile_latent_min_size",
             "tile_overlap_factor")
    saved = {name: getattr(model, name) for name in names if hasattr(model, name)}
    try:
        model.use_slicing = run.sliced
        if run.tiling is not None:
            tile = max(downscale, run.tiling.tile // downscale * downscale)
            overlap = min(run.tiling.overlap, tile // 4)
            model.use_tiling = True
            model.tile_sample_min_size = tile
            model.tile_latent_min_size = tile // downscale
            model.tile_overlap_factor = overlap / tile
        yield
    finally:
        for name, value in saved.items():
            setattr(model, name, value)


def check_latents(vae: Any, latents: torch.Tensor) -> None:
    """Latents this VAE can decode: ``[B, C, H, W]`` with its ``latent_channels`` and at
    least one latent pixel; else a ``ValueError`` naming the shape."""
    channels = getattr(getattr(vae.vae, "config", None), "latent_channels", None)
    if latents.dim() != 4 or (channels is not None and latents.shape[1] != channels):
        raise ValueError(f"this VAE decodes latents [B, {channels or 'C'}, H, W], got shape "
                         f"{tuple(latents.shape)}: decode a latent made for this VAE's model")
    if 0 in latents.shape:
        raise ValueError(f"the latent is empty (shape {tuple(latents.shape)})")


def decode_raw(vae: Any, latents: torch.Tensor, tiling: Tiling | None = None) -> torch.Tensor:
    """VAE-space latents (already divided by the scaling factor) → pixels in -1..1 ``[B, C,
    H, W]``, planned as the module says. No gradient."""
    import torch

    check_latents(vae, latents)
    model = vae.vae
    factor = vae.downscale
    height, width = latents.shape[-2] * factor, latents.shape[-1] * factor
    run = plan(model, height, width, latents.shape[0], "decode", tiling)
    from nodes.diffusion.precision import decode_with_upcast

    def decode(m: Any) -> torch.Tensor:
        return m.decode(latents.to(device=m.device, dtype=m.dtype), return_dict=False)[0]

    with torch.no_grad(), _configured(model, run, factor):
        return decode_with_upcast(model, decode)  # a half VAE's NaNs: again in fp32


def encode_raw(vae: Any, pixels: torch.Tensor, tiling: Tiling | None = None) -> Any:
    """Pixels in -1..1 ``[B, C, H, W]`` → the VAE's posterior (``latent_dist``), planned as
    the module says. No gradient."""
    import torch

    model = vae.vae
    run = plan(model, pixels.shape[-2], pixels.shape[-1], pixels.shape[0], "encode", tiling)
    with torch.no_grad(), _configured(model, run, vae.downscale):
        return model.encode(pixels.to(device=model.device, dtype=model.dtype)).latent_dist
