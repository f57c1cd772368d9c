"""The one sampling loop, written with diffusers' pipeline math.

``sample`` reproduces ``StableDiffusionPipeline`` (text-to-image) and
``StableDiffusionImg2ImgPipeline`` (``denoise`` < 1, diffusers' ``strength``) on
the same weights, seed and scheduler: same noise draw from a CPU generator, same
timesteps, same classifier-free guidance batch ``[uncond, cond]``, same
``scheduler.step`` arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from nodes.diffusion.handles import Conditioning, DiffusionModel, Latent

StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass(frozen=True)
class SamplingParams:
    seed: int
    steps: int
    cfg: float
    denoise: float = 1.0
    eta: float = 0.0


def prepare_timesteps(
    scheduler: Any, steps: int, denoise: float, device: torch.device
) -> tuple[torch.Tensor, int]:
    """Set the schedule and keep its last ``denoise`` fraction (img2img's strength).

    Returns the timesteps to run and the index of the first one.
    """
    scheduler.set_timesteps(steps, device=device)
    if denoise >= 1.0:
        return scheduler.timesteps, 0
    init_timestep = min(int(steps * denoise), steps)
    t_start = max(steps - init_timestep, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps, t_start


def initial_latents(
    scheduler: Any,
    latent: Latent,
    timesteps: torch.Tensor,
    denoise: float,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise the input latent for the first timestep; returns (latents, noise).

    An all-zero latent at full denoise (Empty Latent Image) is pure noise scaled by
    ``init_noise_sigma``, as in text-to-image; otherwise the latent is noised to
    the first timestep with ``scheduler.add_noise``, as in image-to-image.
    """
    samples = latent.samples.to(device=device, dtype=dtype)
    noise = randn_tensor(tuple(samples.shape), generator=generator, device=device, dtype=dtype)
    if denoise >= 1.0 and not bool(samples.any()):
        return noise * scheduler.init_noise_sigma, noise
    if len(timesteps) == 0:
        return samples, noise
    latent_timestep = timesteps[:1].repeat(samples.shape[0])
    return scheduler.add_noise(samples, noise, latent_timestep), noise


def guidance_embeds(
    positive: Conditioning,
    negative: Conditioning,
    batch: int,
    do_cfg: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``[neg * B, pos * B]`` as the pipelines batch them (or ``[pos * B]`` without CFG)."""
    pos = positive.embeds.to(device=device, dtype=dtype)
    pos = pos.repeat(batch // pos.shape[0], 1, 1) if pos.shape[0] != batch else pos
    if not do_cfg:
        return pos
    neg = negative.embeds.to(device=device, dtype=dtype)
    neg = neg.repeat(batch // neg.shape[0], 1, 1) if neg.shape[0] != batch else neg
    if neg.shape[1] != pos.shape[1]:
        raise ValueError(
            f"positive and negative prompts have different token lengths "
            f"({pos.shape[1]} vs {neg.shape[1]})"
        )
    return torch.cat([neg, pos])


def step_kwargs(scheduler: Any, generator: torch.Generator, eta: float) -> dict[str, Any]:
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


@torch.no_grad()
def sample(
    model: DiffusionModel,
    scheduler: Any,
    positive: Conditioning,
    negative: Conditioning,
    latent: Latent,
    params: SamplingParams,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Denoise ``latent``; returns the final latents (UNet space)."""
    unet = model.unet
    device, dtype = unet.device, unet.dtype
    # The noise comes from a CPU generator so a seed gives the same image on any device.
    generator = torch.Generator("cpu").manual_seed(params.seed)
    timesteps, _ = prepare_timesteps(scheduler, params.steps, params.denoise, device)
    latents, _ = initial_latents(
        scheduler, latent, timesteps, params.denoise, generator, device, dtype
    )
    batch = latents.shape[0]
    do_cfg = params.cfg > 1.0 and unet.config.time_cond_proj_dim is None
    embeds = guidance_embeds(positive, negative, batch, do_cfg, device, dtype)
    extra = step_kwargs(scheduler, generator, params.eta)
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        model_input = torch.cat([latents] * 2) if do_cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        noise_pred = unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
        if do_cfg:
            noise_uncond, noise_text = noise_pred.chunk(2)
            noise_pred = noise_uncond + params.cfg * (noise_text - noise_uncond)
        latents = scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0]
        if callback is not None:
            callback(i + 1, total, latents)
    return latents
