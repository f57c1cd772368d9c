"""x̂₀, the clean latent a step's noise prediction implies: what ComfyUI's force_full_denoise
ends on and what live previews show (the noisy latents themselves look like confetti)."""

from __future__ import annotations

from typing import Any

import torch


def predicted_original(scheduler: Any, timestep: torch.Tensor | int, model_input: torch.Tensor,
                       prediction: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """x̂₀ from one UNet prediction at ``timestep`` (``model_input`` is the VP-space input,
    ``scale`` what ``scale_model_input`` applied: sqrt(ᾱ) for σ-space schedulers, else 1)."""
    scale = torch.as_tensor(scale, dtype=model_input.dtype)
    if float(scale) < 1.0:
        alpha_bar = scale**2
    else:
        alpha_bar = scheduler.alphas_cumprod[int(timestep)].to(model_input.dtype)
    alpha_bar = alpha_bar.to(model_input.device)
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return (model_input - (1 - alpha_bar).sqrt() * prediction) / alpha_bar.sqrt()
    if kind == "v_prediction":
        return alpha_bar.sqrt() * model_input - (1 - alpha_bar).sqrt() * prediction
    if kind == "sample":
        return prediction
    raise ValueError(f"unknown prediction type {kind!r}")


def denoised_estimate(scheduler: Any, timestep: torch.Tensor, latents: torch.Tensor,
                      prediction: torch.Tensor | None) -> torch.Tensor | None:
    """x̂₀ for a live preview from the latents a step started from (the sampler's space)
    and its guided prediction, without touching the scheduler's state; None when the
    scheduler has no ᾱ schedule (a stand-in) or the step made no prediction."""
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
