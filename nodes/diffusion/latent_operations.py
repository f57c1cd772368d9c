"""Latent operations (ComfyUI's LATENT_OPERATION) and the guidance extensions that apply
them or rescale on the denoised estimate: LatentApplyOperationCFG and CFGNorm.

A latent operation is a function of a latent batch ``[B, C, h, w]``:

- Reinhard tonemapping: each pixel's channel vector keeps its direction while its
  length m is compressed as m·T/(m + T), T = (mean + 5·std of the lengths)·multiplier:
  values far above the typical length are pulled in (HDR-like), small ones barely move.
- Sharpen: the channel directions (each pixel's vector over its length) go through an
  unsharp kernel, a Gaussian of ``2·radius + 1`` taps (σ in units of the radius)
  scaled by −10·alpha with its centre making the kernel sum to 1; lengths are kept.

ComfyUI applies the CFG forms to the denoised (x̂₀) predictions; so does this module:
each prediction p becomes x̂₀ = a·x + b·p (:func:`nodes.diffusion.denoised.x0_coefficients`)
and back, so the images are ComfyUI's whatever the model predicts (ε, v or x₀).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from nodes.diffusion.denoised import step_x0_coefficients
from nodes.diffusion.extensions import Predictions, SamplerExtension, Step

if TYPE_CHECKING:
    from nodes.diffusion.sampling import SamplingRun


def _channel_norm(latent: torch.Tensor, eps: float) -> torch.Tensor:
    return (torch.linalg.vector_norm(latent, dim=1) + eps)[:, None]


@dataclass(frozen=True)
class TonemapReinhard:
    """Reinhard tonemapping of the channel-vector lengths (see the module)."""

    multiplier: float = 1.0

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        length = _channel_norm(latent, 1e-10)
        direction = latent / length
        dims = list(range(1, length.ndim))
        top = (length.std(dim=dims, keepdim=True) * 5
               + length.mean(dim=dims, keepdim=True)) * self.multiplier
        scaled = length / top
        return direction * (scaled / (scaled + 1.0) * top)


@dataclass(frozen=True)
class Sharpen:
    """Unsharp masking of the channel directions (see the module)."""

    radius: int = 9
    sigma: float = 1.0
    alpha: float = 0.1

    def kernel(self, device: torch.device) -> torch.Tensor:
        size = 2 * self.radius + 1
        axis = torch.linspace(-1, 1, size, device=device)
        y, x = torch.meshgrid(axis, axis, indexing="ij")
        gaussian = torch.exp(-(x * x + y * y) / (2.0 * self.sigma ** 2))
        kernel = gaussian / gaussian.sum() * (-10.0 * self.alpha)
        centre = size // 2
        kernel[centre, centre] += 1.0 - kernel.sum()
        return kernel

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        length = _channel_norm(latent, 1e-6)
        direction = latent / length
        channels, r = latent.shape[1], self.radius
        if min(latent.shape[-2:]) <= r:
            raise ValueError(f"sharpen_radius {r} needs a latent larger than {r} pixels on "
                             f"each side; this one is {tuple(latent.shape[-2:])}")
        padded = F.pad(direction, (r, r, r, r), mode="reflect")
        kernel = self.kernel(latent.device).to(latent.dtype)
        weight = kernel.expand(channels, 1, *kernel.shape)
        sharpened = F.conv2d(padded, weight, padding=r, groups=channels)[..., r:-r, r:-r]
        return length * sharpened


def _x0(run: SamplingRun, step: Step, prediction: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x̂₀ of ``prediction``, a·x, b) at this step."""
    if step.model_input is None:
        raise RuntimeError("this extension needs the step's model input (the sampler sets it)")
    a, b = step_x0_coefficients(run.scheduler, step.timestep, prediction)
    offset = a * step.model_input.to(prediction.dtype)
    return offset + b * prediction, offset, b


class OperationCFG(SamplerExtension):
    """LatentApplyOperationCFG: before guidance, the conditional x̂₀ becomes
    ``op(x̂₀₊ − x̂₀₋) + x̂₀₋`` (with CFG) or ``op(x̂₀₊)`` (without)."""

    priority = 20  # with the predictions: before guidance is formed from them
    without_cfg = True

    def __init__(self, operation: object):
        if not callable(operation):
            raise ValueError("operation must be a LATENT_OPERATION")
        self.operation = operation

    def predictions(self, run: SamplingRun, step: Step, preds: Predictions) -> None:
        cond, offset, b = _x0(run, step, preds.cond)
        if run.do_cfg:
            uncond = offset + b * preds.uncond
            new = self.operation(cond - uncond) + uncond
        else:
            new = self.operation(cond)
        preds.cond = (new - offset) / b


class CFGNorm(SamplerExtension):
    """CFGNorm: the guided x̂₀ is scaled, per pixel, so its channel-vector length is at
    most the conditional x̂₀'s, then by ``strength``."""

    priority = 850  # on the guided prediction (after every guidance term and RescaleCFG)
    without_cfg = True

    def __init__(self, strength: float = 1.0):
        self.strength = float(strength)

    def guidance(self, run: SamplingRun, step: Step, preds: Predictions,
                 guidance: torch.Tensor) -> torch.Tensor:
        base = preds.uncond if run.do_cfg else preds.cond
        guided, offset, b = _x0(run, step, base + guidance)
        cond = offset + b * preds.cond
        scale = (torch.linalg.vector_norm(cond, dim=1, keepdim=True)
                 / (torch.linalg.vector_norm(guided, dim=1, keepdim=True) + 1e-8))
        out = guided * scale.clamp(0.0, 1.0) * self.strength
        return (out - offset) / b - base


class Mahiro(SamplerExtension):
    """Mahiro (ComfyUI's node): the guided x̂₀ is pulled toward the conditional x̂₀ scaled by
    cfg, the more so the less the unconditional direction agrees with the step. With
    ``leap = cfg·x̂₀₊``, ``merge = (leap + x̂₀_cfg)/2`` and ``s`` the cosine similarity
    (over channels, averaged over pixels and the batch) of √|·|·sign(·) of
    ``cfg·x̂₀₋`` and of ``merge``: ``x̂₀ = ((2s + 2)·x̂₀_cfg + (2 − 2s)·leap)/4``."""

    priority = 840  # on the guided prediction, before CFGNorm's cap
    without_cfg = True

    def guidance(self, run: SamplingRun, step: Step, preds: Predictions,
                 guidance: torch.Tensor) -> torch.Tensor:
        base = preds.uncond if run.do_cfg else preds.cond
        guided, offset, b = _x0(run, step, base + guidance)
        scale = run.params.cfg if run.do_cfg else 1.0
        leap = (offset + b * preds.cond) * scale
        uncond_leap = (offset + b * preds.uncond) * scale
        merge = (leap + guided) / 2

        def signed_sqrt(x: torch.Tensor) -> torch.Tensor:
            return x.abs().sqrt() * x.sign()

        similarity = F.cosine_similarity(signed_sqrt(uncond_leap), signed_sqrt(merge)).mean()
        weight = 2 * (similarity + 1)
        out = (weight * guided + (4 - weight) * leap) / 4
        return (out - offset) / b - base
