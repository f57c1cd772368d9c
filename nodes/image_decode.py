"""Decoding an opened Pillow image into 0..1 levels: every mode, deep grey images (16-bit
PNGs, 32-bit integer and float TIFFs) by their own depth, and the frames of an animated
file (GIF, APNG, WebP, multi-page TIFF) as ComfyUI's Load Image reads them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# Pillow's single-channel modes deeper than 8 bits: converting them to RGB clips every
# level above 255 to white (a 16-bit depth map became a white square)
DEEP_GREY = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# formats whose extra frames are not a sequence (ComfyUI's exclusion): a JPEG's MPO preview
_NOT_FRAMES = frozenset({"MPO"})


def grey_levels(img: Image.Image) -> np.ndarray:
    """``[H, W]`` float32 in 0..1 of a deep grey image: 16-bit and 32-bit integer levels
    over 65535 (Pillow reads 16-bit PNGs as ``I;16`` or ``I``; ComfyUI takes ``I`` as
    16-bit too); float levels as they are when they lie in 0..1, else over 255 or 65535,
    whichever holds them (a float TIFF saved from 8-bit or 16-bit data)."""
    import numpy as np

    levels = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = float(np.nanmax(levels)) if levels.size else 0.0
        scale = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0
    else:
        scale = 65535.0
    return np.nan_to_num(np.clip(levels / scale, 0.0, 1.0)).astype(np.float32)


def rgba_levels(img: Image.Image) -> np.ndarray:
    """``[H, W, 4]`` float32 in 0..1 of any image (opaque where it has no alpha)."""
    import numpy as np

    if img.mode in DEEP_GREY:
        grey = grey_levels(img)
        return np.stack([grey, grey, grey, np.ones_like(grey)], axis=-1)
    return np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0


def rgba8(img: Image.Image) -> Image.Image:
    """An 8-bit RGBA copy (to resize or crop), deep grey levels scaled, not clipped."""
    import numpy as np
    from PIL import Image

    if img.mode in DEEP_GREY:
        grey = Image.fromarray((grey_levels(img) * 255.0).round().astype(np.uint8))
        return grey.convert("RGBA")
    return img.convert("RGBA")


def frames(img: Image.Image) -> Iterator[Image.Image]:
    """The frames of ``img`` that make its batch, upright (EXIF): every frame of the first
    frame's size (ComfyUI skips the others), one for a still image or an MPO."""
    from PIL import ImageOps, ImageSequence

    if getattr(img, "n_frames", 1) <= 1 or img.format in _NOT_FRAMES:
        yield ImageOps.exif_transpose(img)
        return
    size = None
    for frame in ImageSequence.Iterator(img):
        upright = ImageOps.exif_transpose(frame)
        if size is None:
            size = upright.size
        if upright.size == size:
            yield upright
