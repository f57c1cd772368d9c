"""ComfyUI's ``comfy.sample``: :func:`prepare_noise` only.

``prepare_noise(latent, seed, batch_inds)`` is ComfyUI's seeded noise: a CPU
``torch.Generator`` seeded with ``seed`` draws ``randn`` of the latent's shape (with
``batch_inds``, one draw per batch index up to the largest, keeping those asked for).
``sample`` / ``sample_custom`` run a ComfyUI model and are not provided (naming them
raises an ``AttributeError`` that says so).
"""

from __future__ import annotations

from typing import Any

from comfy_compat.shims._missing import missing_attributes


def prepare_noise(latent_image: Any, seed: int, noise_inds: Any = None) -> Any:
    """Noise of ``latent_image``'s shape from ``seed`` (see the module doc)."""
    import numpy as np
    import torch

    generator = torch.manual_seed(int(seed))
    shape, dtype = tuple(latent_image.size()), latent_image.dtype
    if noise_inds is None:
        return torch.randn(shape, dtype=dtype, layout=latent_image.layout,
                           generator=generator, device="cpu")
    unique, inverse = np.unique(np.asarray(noise_inds), return_inverse=True)
    draws = []
    for i in range(int(unique[-1]) + 1):
        noise = torch.randn((1, *shape[1:]), dtype=dtype, layout=latent_image.layout,
                            generator=generator, device="cpu")
        if i in unique:
            draws.append(noise)
    return torch.cat([draws[i] for i in inverse], dim=0)


def fix_empty_latent_channels(model: Any, latent_image: Any) -> Any:
    """ComfyUI resizes an all-zero latent to the model's channel count; Steerflow's
    Empty Latent Image already has the model's channels (link its ``vae``), so the
    latent is returned as it is."""
    return latent_image


# Impact Pack wraps comfy.sample.sample at its top (a wrapper Steerflow never calls)
COMFY_NAMES = ("sample", "sample_custom", "prepare_mask", "prepare_sampling",
               "get_additional_models", "cleanup_additional_models", "convert_cond",
               "get_models_from_cond")
__getattr__ = missing_attributes(__name__, "ComfyUI's sampling runs ComfyUI models",
                                 COMFY_NAMES)
