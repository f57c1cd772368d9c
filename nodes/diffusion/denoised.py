"""x̂₀, the clean latent a step's noise prediction implies: what ComfyUI's force_full_denoise
ends on and what live previews show (the noisy latents themselves look like confetti)."""

from __future__ import annotations

from typing import Any

import torch


def predicted_original(scheduler: Any, timestep: torch.Tensor | int, model_input: torch.Tensor,
                       prediction: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """x̂₀ from one UNet prediction at ``timestep`` (``model_input`` is the VP-space input,
    ``scale`` what ``scale_model_input`` applied: sqrt(ᾱ) for σ-space schedulers, else 1)."""
    a, b = x0_coefficients(scheduler, timestep, scale, model_input)
    return a * model_input + b * prediction


def x0_coefficients(scheduler: Any, timestep: torch.Tensor | int, scale: torch.Tensor | float,
                    like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` with x̂₀ = a·x + b·prediction for the UNet's VP-space input x at
    ``timestep`` (``scale`` as in :func:`predicted_original`); scalars as tensors on
    ``like``'s device and dtype. ε: a = 1/√ᾱ, b = −√(1−ᾱ)/√ᾱ; v: a = √ᾱ, b = −√(1−ᾱ);
    sample: a = 0, b = 1. A continuous-σ model's scheduler gives its own (EDM's c_skip,
    c_out and c_in at the step's σ)."""
    if _continuous(scheduler):
        a, b = scheduler.x0_coefficients(scheduler.sigma_at(timestep))
        return (torch.tensor(a, dtype=like.dtype, device=like.device),
                torch.tensor(b, dtype=like.dtype, device=like.device))
    alpha_bar = alpha_bar_at(scheduler, timestep, scale, like)
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return 1 / alpha_bar.sqrt(), -(1 - alpha_bar).sqrt() / alpha_bar.sqrt()
    if kind == "v_prediction":
        return alpha_bar.sqrt(), -(1 - alpha_bar).sqrt()
    if kind == "sample":
        return torch.zeros_like(alpha_bar), torch.ones_like(alpha_bar)
    raise ValueError(f"unknown prediction type {kind!r}")


def alpha_bar_at(scheduler: Any, timestep: torch.Tensor | int, scale: torch.Tensor | float,
                 like: torch.Tensor) -> torch.Tensor:
    """ᾱ at ``timestep``: ``scale``² where the scheduler scaled the input (σ-space: any σ,
    also between the training timesteps), else the training schedule's; on ``like``'s
    device and dtype. A continuous-σ model's is that of its data scaled to unit variance,
    σ_data²/(σ² + σ_data²) (1/(1 + σ²) at σ_data = 1, as for the σ-space samplers)."""
    if _continuous(scheduler):
        sigma, data = scheduler.sigma_at(timestep), float(scheduler.config.sigma_data)
        return torch.tensor(data ** 2 / (sigma ** 2 + data ** 2), dtype=like.dtype,
                            device=like.device)
    scale = torch.as_tensor(scale, dtype=like.dtype)
    if float(scale) < 1.0:
        alpha_bar = scale**2
    else:
        alpha_bar = scheduler.alphas_cumprod[int(timestep)].to(like.dtype)
    return alpha_bar.to(like.device)


def _continuous(scheduler: Any) -> bool:
    """Whether ``scheduler`` samples a continuous-σ model (nodes.diffusion.continuous)."""
    return callable(getattr(scheduler, "sigma_at", None))


def step_scale(scheduler: Any, timestep: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """What the scheduler's own ``scale_model_input`` multiplies by at this step."""
    return scheduler.scale_model_input(torch.ones((), dtype=torch.float32, device=like.device),
                                       timestep).float().cpu()


def step_x0_coefficients(scheduler: Any, timestep: torch.Tensor, like: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`x0_coefficients` at a sampling step, the scale read off the scheduler's own
    ``scale_model_input`` (the σ of this step or stage)."""
    return x0_coefficients(scheduler, timestep, step_scale(scheduler, timestep, like), like)


def denoised_estimate(scheduler: Any, timestep: torch.Tensor, latents: torch.Tensor,
                      prediction: torch.Tensor | None) -> torch.Tensor | None:
    """x̂₀ for a live preview from the latents a step started from (the sampler's space)
    and its guided prediction, without touching the scheduler's state; None when the
    scheduler has no ᾱ schedule (a stand-in) or the step made no prediction."""
    if _continuous(scheduler) and prediction is not None \
            and prediction.shape == latents.shape:
        with torch.no_grad():
            return scheduler.denoised(prediction, latents.float(),
                                      scheduler.sigma_at(timestep)).to(latents.dtype)
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None or prediction is None or prediction.shape != latents.shape:
        return None
    t = min(max(round(float(timestep)), 0), len(alphas) - 1)
    alpha_bar = alphas[t].to(device=latents.device, dtype=latents.dtype)
    # σ-space samplers (Euler, Heun, ...) start at σ_max > 1 and keep x·sqrt(1 + σ²)
    sigma_space = float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0
    scale = alpha_bar.sqrt() if sigma_space else torch.ones((), dtype=latents.dtype)
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction", "sample"):
        return None
    with torch.no_grad():
        return predicted_original(scheduler, t, latents * scale.to(latents.device), prediction,
                                  scale if sigma_space else 1.0)
