"""ComfyUI's ``node_helpers``: small image helpers packs share.

- :func:`pillow`: call a PIL function, retrying once with truncated images allowed
  (ComfyUI's way of opening slightly damaged files).
- :func:`hasher`: the hash constructor for file fingerprints (sha256).
- :func:`string_to_torch_dtype`, :func:`image_alpha_fix`.

``conditioning_set_values`` edits ComfyUI's conditioning lists; Steerflow's
CONDITIONING is its own object, so it is not provided (naming it raises an
``AttributeError`` that says so).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from comfy_compat.shims._missing import missing_attributes


def pillow(fn: Callable[[Any], Any], arg: Any) -> Any:
    """``fn(arg)``; on a truncated or damaged image, once more with
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` set (restored afterwards)."""
    from PIL import ImageFile, UnidentifiedImageError

    try:
        return fn(arg)
    except (OSError, UnidentifiedImageError, ValueError):
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return fn(arg)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def hasher() -> Callable[..., Any]:
    return hashlib.sha256


def string_to_torch_dtype(string: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(string)


def image_alpha_fix(destination: Any, source: Any) -> tuple[Any, Any]:
    """Give ``source`` ``destination``'s channel count (``[B, H, W, C]`` images): drop
    its alpha, or add an opaque one."""
    import torch

    if destination.shape[-1] < source.shape[-1]:
        source = source[..., :destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        pad = torch.ones((*source.shape[:-1], destination.shape[-1] - source.shape[-1]),
                         dtype=source.dtype, device=source.device)
        source = torch.cat((source, pad), dim=-1)
    return destination, source


COMFY_NAMES = ("conditioning_set_values",)
__getattr__ = missing_attributes(__name__, "it edits ComfyUI's own conditioning objects",
                                 COMFY_NAMES)
