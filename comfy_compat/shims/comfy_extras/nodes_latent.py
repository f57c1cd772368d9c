"""ComfyUI's ``comfy_extras.nodes_latent``: ``LatentBatch`` (see
:mod:`comfy_compat.builtin_nodes`) and its helper ``reshape_latent_to``."""

from typing import Any

from comfy_compat.builtin_nodes import LatentBatch
from comfy_compat.shims._missing import missing_attributes


def reshape_latent_to(target_shape: Any, latent: Any, repeat_batch: bool = True) -> Any:
    """``latent`` at ``target_shape``'s size (bilinear, centre-cropped to its aspect) and,
    with ``repeat_batch``, repeated to its batch, as ComfyUI's helper (the blend and
    composite nodes of ``nodes_post_processing`` use it)."""
    from comfy.utils import common_upscale, repeat_to_batch_size

    if tuple(latent.shape[1:]) != tuple(target_shape[1:]):
        latent = common_upscale(latent, target_shape[-1], target_shape[-2], "bilinear",
                                "center")
    return repeat_to_batch_size(latent, target_shape[0]) if repeat_batch else latent


__all__ = ["LatentBatch", "reshape_latent_to"]
__getattr__ = missing_attributes(__name__)
