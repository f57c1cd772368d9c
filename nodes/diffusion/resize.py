"""Resizing images and latents the way ComfyUI's ``common_upscale`` does.

Tensors are ``[B, C, H, W]``. ``crop="center"`` first cuts the source to the target's
aspect ratio (rounded, symmetric), then the methods are:

* ``nearest-exact``, ``bilinear``, ``area``, ``bicubic``: ``torch.nn.functional.interpolate``
  in that mode (``align_corners`` left at torch's default, as ComfyUI calls it);
* ``bislerp``: bilinear sampling positions, but each pair of neighbouring channel
  vectors is blended by spherical interpolation of their directions and linear
  interpolation of their lengths, one axis after the other (width, then height) —
  it keeps latent vectors' norms where bilinear shrinks them;
* ``lanczos``: PIL's Lanczos filter on the 8-bit image, as ComfyUI does (so values are
  quantised to 1/255 and clipped to 0..1: meant for images, not latents).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from nodes.diffusion.handles import Latent

TORCH_METHODS = ("nearest-exact", "bilinear", "area", "bicubic")


def center_crop(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The centred part of ``samples`` with the aspect ratio ``width / height``, never
    less than a pixel a side (a 4 px wide image cropped to 1:7 would otherwise be empty)."""
    old_h, old_w = samples.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = min(round((old_w - old_w * (new_aspect / old_aspect)) / 2), (old_w - 1) // 2)
    elif old_aspect < new_aspect:
        y = min(round((old_h - old_h * (old_aspect / new_aspect)) / 2), (old_h - 1) // 2)
    return samples[..., y:old_h - y, x:old_w - x]


def common_upscale(samples: torch.Tensor, width: int, height: int, method: str,
                   crop: str = "disabled") -> torch.Tensor:
    """``samples`` resized to ``height x width`` with ``method`` (see the module docstring)."""
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize to {width}x{height}: both sides must be at least 1")
    if crop == "center":
        samples = center_crop(samples, width, height)
    elif crop != "disabled":
        raise ValueError(f"unknown crop {crop!r}: use 'disabled' or 'center'")
    if method == "bislerp":
        return bislerp(samples, width, height)
    if method == "lanczos":
        return lanczos(samples, width, height)
    if method not in TORCH_METHODS:
        raise ValueError(f"unknown upscale method {method!r}")
    dtype = samples.dtype
    out = F.interpolate(samples.float(), size=(height, width), mode=method)
    return out.to(dtype)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """PIL Lanczos resampling of each image in the batch (via 8-bit, as ComfyUI)."""
    import numpy as np
    from PIL import Image

    out = []
    for image in samples:
        arr = np.clip(255.0 * image.movedim(0, -1).float().cpu().numpy(), 0, 255)
        arr = arr.astype(np.uint8)  # truncating, as ComfyUI does
        pil = Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
        resized = np.asarray(pil.resize((width, height), resample=Image.Resampling.LANCZOS))
        tensor = torch.from_numpy(resized.astype(np.float32) / 255.0)
        out.append(tensor[..., None] if tensor.dim() == 2 else tensor)
    return torch.stack(out).movedim(-1, 1).to(device=samples.device, dtype=samples.dtype)


def _axis_positions(old: int, new: int, device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each output index along one axis: the left and right source indices and the
    blend ratio, at the positions bilinear (half-pixel centres) resampling samples."""
    # Bilinearly resampling the index ramp gives each output's fractional source position
    # clamped to [0, old - 1], exactly where torch's bilinear mode reads.
    ramp = torch.arange(old, dtype=torch.float32, device=device).reshape(1, 1, 1, old)
    pos = F.interpolate(ramp, size=(1, new), mode="bilinear").reshape(new)
    left = pos.floor()
    ratio = pos - left
    left = left.long()
    right = (left + 1).clamp(max=old - 1)
    return left, right, ratio


def _slerp(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Blend rows of ``a`` and ``b`` ``[N, C]`` by ``ratio`` ``[N, 1]``: directions by
    spherical interpolation, lengths linearly."""
    norm_a = a.norm(dim=-1, keepdim=True)
    norm_b = b.norm(dim=-1, keepdim=True)
    unit_a = torch.where(norm_a == 0, torch.zeros_like(a), a / norm_a)
    unit_b = torch.where(norm_b == 0, torch.zeros_like(b), b / norm_b)
    dot = (unit_a * unit_b).sum(-1, keepdim=True)
    omega = torch.acos(dot.clamp(-1, 1))
    sin_omega = torch.sin(omega)
    out = (torch.sin((1 - ratio) * omega) / sin_omega * unit_a
           + torch.sin(ratio * omega) / sin_omega * unit_b)
    out = out * (norm_a * (1 - ratio) + norm_b * ratio)
    # (Nearly) parallel vectors: the direction is a's; opposite ones: a plain lerp.
    out = torch.where(dot > 1 - 1e-5, a, out)
    return torch.where(dot < 1e-5 - 1, a * (1 - ratio) + b * ratio, out)


def _bislerp_axis(samples: torch.Tensor, new: int, dim: int) -> torch.Tensor:
    x = samples.movedim(dim, -1)  # [B, C, other, old]
    left, right, ratio = _axis_positions(x.shape[-1], new, x.device)
    a = x[..., left].movedim(1, -1)  # [B, other, new, C]
    b = x[..., right].movedim(1, -1)
    shape = a.shape
    r = ratio.reshape(1, 1, new, 1).expand(*shape[:-1], 1).reshape(-1, 1)
    out = _slerp(a.reshape(-1, shape[-1]), b.reshape(-1, shape[-1]), r).reshape(shape)
    return out.movedim(-1, 1).movedim(-1, dim)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Spherical-linear resize of ``[B, C, H, W]`` (width pass, then height pass)."""
    dtype = samples.dtype
    out = _bislerp_axis(samples.float(), width, -1)
    out = _bislerp_axis(out, height, -2)
    return out.to(dtype)


def resize_latent(latent: Latent, width: int, height: int, method: str,
                  crop: str = "disabled") -> Latent:
    """A LATENT resized to ``height x width`` latent pixels, its masks following.

    The noise mask (at the latent or the image size) is cut like the samples and resized
    bilinearly, as ComfyUI resizes noise masks, so soft edges stay soft; an inpainting
    model's binary mask is resized nearest-exact and its masked-image latents like the
    samples.
    """
    from nodes.diffusion.handles import InpaintCondition
    from nodes.diffusion.masking import mask_to_latent

    samples = latent.samples
    size = (int(samples.shape[-2]), int(samples.shape[-1]))

    def cut(t: torch.Tensor) -> torch.Tensor:
        return center_crop(t, width, height) if crop == "center" else t

    noise_mask = None
    if latent.noise_mask is not None:
        mask = cut(mask_to_latent(latent.noise_mask, size).float())
        noise_mask = F.interpolate(mask, size=(height, width), mode="bilinear").clamp(0, 1)
    inpaint = None
    if latent.inpaint is not None:
        inpaint = InpaintCondition(
            common_upscale(latent.inpaint.mask, width, height, "nearest-exact", crop),
            common_upscale(latent.inpaint.masked_latents, width, height, method, crop))
    return replace(latent, samples=common_upscale(samples, width, height, method, crop),
                   noise_mask=noise_mask, inpaint=inpaint, extension_results=())
