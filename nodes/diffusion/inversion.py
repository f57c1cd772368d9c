"""DDIM inversion: run the deterministic DDIM update backwards, image → noise.

The loop is the sampler's own (:func:`nodes.diffusion.sampling.sample`) driven by
diffusers' ``DDIMInverseScheduler``: every attached extension (ControlNet, the
inpainting concat, attention processors) applies, and the math is that of
diffusers' ``StableDiffusionDiffEditPipeline.invert`` (without its optional
noise regularisation): at each ascending timestep the UNet predicts the noise
of the current latent and the inverse DDIM step moves it one level up.

The inverted latent is in the variance-preserving space the UNet sees
(``x_t = sqrt(ᾱ_t)·x_0 + sqrt(1-ᾱ_t)·ε``), which is what a sampler with its noise
addition disabled (``KSamplerAdvanced``, add_noise off) starts from.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from nodes.diffusion.handles import Conditioning, DiffusionModel, Latent, Tensor

if TYPE_CHECKING:
    import torch
    from diffusers import DDIMInverseScheduler

    from nodes.diffusion.sampling import StepCallback


@dataclass(frozen=True)
class LatentTrajectory:
    """LATENT_TRAJECTORY: the latents DDIM inversion passed through.

    ``latents`` ``[n + 1, B, C, h, w]`` runs from the clean input (index 0) to the
    most noisy (index n); ``timesteps`` ``[n]`` holds the timestep of latents 1..n.
    ``steps`` is the length of the full schedule the inversion used: the latent at
    index ``i`` is where a sampler with that many steps is at ``start_at_step =
    steps - i``.
    """

    # node inputs' types: pydantic resolves them (see handles.Tensor)
    latents: Tensor
    timesteps: Tensor
    steps: int

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def at_start_step(self, start_at_step: int) -> torch.Tensor:
        """The latent a ``steps``-step sampler starting at ``start_at_step`` begins from."""
        index = self.steps - start_at_step
        if not 0 <= index < len(self):
            first = self.steps - len(self) + 1
            raise ValueError(f"this trajectory covers start_at_step {first}..{self.steps} of a "
                             f"{self.steps}-step schedule, not {start_at_step}")
        return self.latents[index]


def inverse_scheduler(scheduler_config: dict) -> DDIMInverseScheduler:
    """DDIMInverseScheduler from the model's scheduler config (as diffusers' examples do),
    less the options only other schedulers know (which diffusers would warn about)."""
    from diffusers import DDIMInverseScheduler

    known = set(inspect.signature(DDIMInverseScheduler.__init__).parameters)
    return DDIMInverseScheduler.from_config(
        {k: v for k, v in scheduler_config.items() if k in known or k.startswith("_")})


def ddim_invert(model: DiffusionModel, positive: Conditioning, negative: Conditioning | None,
                latent: Latent, steps: int, cfg: float = 1.0, denoise: float = 1.0,
                callback: StepCallback | None = None) -> LatentTrajectory:
    """Invert ``latent`` (clean, UNet space) over the first ``int(steps * denoise)`` steps
    of a ``steps``-step DDIM schedule; returns the whole trajectory."""
    import torch

    from nodes.diffusion.sampling import SamplingParams, sample

    if cfg > 1.0 and negative is None:
        raise ValueError("cfg > 1 needs a negative conditioning (or use cfg 1, the usual "
                         "choice for inversion)")
    count = min(int(steps * denoise), steps)
    if count < 1:
        raise ValueError(f"denoise {denoise} inverts no step of {steps}")
    scheduler = inverse_scheduler(model.scheduler_config)
    # A noise mask would re-noise the input forward in time; inversion has no use for it.
    latent = replace(latent, noise_mask=None)
    trajectory = [latent.samples.to(device=model.device, dtype=model.dtype)]

    def keep(step: int, total: int, latents: torch.Tensor) -> None:
        trajectory.append(latents.clone())
        if callback is not None:
            callback(step, total, latents)

    params = SamplingParams(seed=0, steps=steps, cfg=cfg, add_noise=False, end_step=count)
    sample(model, scheduler, positive, negative if negative is not None else positive, latent,
           params, callback=keep)
    return LatentTrajectory(torch.stack(trajectory), scheduler.timesteps[:count].cpu(), steps)
