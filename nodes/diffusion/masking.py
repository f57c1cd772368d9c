"""Latent noise masks: partial diffusion keeps the unmasked region of the input."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from nodes.diffusion.extensions import SamplerExtension, Step

if TYPE_CHECKING:
    from nodes.diffusion.sampling import SamplingRun


def mask_to_latent(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A MASK ``[B, H, W]`` (or ``[B, 1, H, W]``) resized to latent ``size`` as ``[B, 1, h, w]``.

    Nearest-neighbour, like diffusers' inpainting pipeline.
    """
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"a mask must be [B, H, W] or [B, 1, H, W], got {tuple(mask.shape)}")
    if tuple(mask.shape[-2:]) != tuple(size):
        mask = F.interpolate(mask.float(), size=size)
    return mask


class NoiseMaskBlend(SamplerExtension):
    """After each step, put back the input latent (noised to the next timestep) where
    the mask is 0, as diffusers' inpainting pipeline does with a 4-channel UNet."""

    priority = 900  # after every other post-step change

    def __init__(self, mask: torch.Tensor):
        self.mask = mask

    def setup(self, run: SamplingRun) -> None:
        mask = mask_to_latent(self.mask, tuple(run.init_latents.shape[-2:]))
        mask = mask.to(device=run.device, dtype=run.dtype)
        if mask.shape[0] not in (1, run.init_latents.shape[0]):
            raise ValueError(f"noise mask batch {mask.shape[0]} does not match the latent batch "
                             f"{run.init_latents.shape[0]}")
        run.state[self] = mask

    def post_step(self, run: SamplingRun, step: Step, latents: torch.Tensor) -> torch.Tensor:
        mask = run.state[self]
        proper = run.init_latents
        if step.index < step.total - 1:
            next_t = run.timesteps[step.index + 1]
            proper = run.scheduler.add_noise(proper, run.noise, torch.tensor([next_t]))
        return (1 - mask) * proper + mask * latents

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)
