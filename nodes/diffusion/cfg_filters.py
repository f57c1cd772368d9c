"""Guidance filters around CFG: FreSca (frequency-scaled guidance) before it, Temporal
Score Rescaling after it.

- **FreSca** (Huang et al. 2025, "FreSca: Unveiling the Scaling Space in Diffusion
  Models"): the guidance direction ``cond − uncond`` is split by a centred FFT into a
  low-frequency square of half-width ``freq_cutoff`` and the rest; each part is scaled
  (``scale_low``, ``scale_high``) and the conditional prediction becomes
  ``uncond + filtered``. High-frequency gain sharpens detail, low-frequency gain moves
  layout and colour. ComfyUI's FreSca filters the denoised (x̂₀) predictions; x̂₀ is an
  affine function of the prediction with one scale per step, so filtering the
  prediction's difference is the same.
- **Temporal Score Rescaling** (Xu et al. 2025, arXiv 2510.01184, eq. 6): the final
  noise estimate is multiplied by ``r = (snr·s² + 1) / (snr·s²/k + 1)``, with
  ``snr = 1/σ²``: ``r`` goes from 1 at high noise to ``k`` at low noise (``s`` =
  ``tsr_sigma`` says how early it takes over). ``k`` < 1 gives more detail, > 1
  smoother images. On x̂₀: ``x̂₀' = x_σ + r·(x̂₀ − x_σ)``, x_σ the step's latent in
  σ-space, as ComfyUI's node does, whatever the model predicts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from nodes.diffusion.denoised import alpha_bar_at, step_scale, x0_coefficients
from nodes.diffusion.extensions import Predictions, SamplerExtension, Step

if TYPE_CHECKING:
    from nodes.diffusion.sampling import SamplingRun


def fourier_filter(x: torch.Tensor, scale_low: float, scale_high: float,
                   freq_cutoff: int) -> torch.Tensor:
    """``x`` ``[..., H, W]`` with its centred spectrum scaled: ``scale_low`` on the square of
    half-width ``freq_cutoff`` around the zero frequency (clipped to the spectrum),
    ``scale_high`` elsewhere."""
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    height, width = spectrum.shape[-2:]
    mask = torch.full((height, width), float(scale_high), device=x.device)
    top, left = max(height // 2 - freq_cutoff, 0), max(width // 2 - freq_cutoff, 0)
    mask[top:height // 2 + freq_cutoff, left:width // 2 + freq_cutoff] = float(scale_low)
    spectrum = torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))
    return torch.fft.ifftn(spectrum, dim=(-2, -1)).real.to(x.dtype)


class FreSca(SamplerExtension):
    """Scale the guidance direction's low and high spatial frequencies apart."""

    priority = 25  # on the predictions, before guidance is formed from them

    def __init__(self, scale_low: float, scale_high: float, freq_cutoff: int):
        self.scale_low, self.scale_high = float(scale_low), float(scale_high)
        self.freq_cutoff = int(freq_cutoff)

    def predictions(self, run: SamplingRun, step: Step, preds: Predictions) -> None:
        if not run.do_cfg:  # no guidance direction to filter (ComfyUI: no uncond pass)
            return
        direction = fourier_filter(preds.cond - preds.uncond, self.scale_low,
                                   self.scale_high, self.freq_cutoff)
        preds.cond = preds.uncond + direction


def tsr_factor(snr: torch.Tensor, k: float, variance: float) -> torch.Tensor:
    """TSR's ratio r (eq. 6): 1 at snr 0, ``k`` as snr → ∞."""
    return (snr * variance + 1) / (snr * variance / k + 1)


class TemporalScoreRescaling(SamplerExtension):
    """Multiply the step's final noise estimate by TSR's r (see the module)."""

    priority = 960  # on the final prediction, after Epsilon Scaling (950)
    without_cfg = True

    def __init__(self, tsr_k: float, tsr_sigma: float):
        self.k = float(tsr_k)
        self.variance = float(tsr_sigma) ** 2

    def guidance(self, run: SamplingRun, step: Step, preds: Predictions,
                 guidance: torch.Tensor) -> torch.Tensor:
        if self.k == 1.0:
            return guidance
        if step.model_input is None:
            raise RuntimeError("Temporal Score Rescaling needs the step's model input")
        base = preds.uncond if run.do_cfg else preds.cond
        prediction = base + guidance
        scale = step_scale(run.scheduler, step.timestep, prediction)
        alpha_bar = alpha_bar_at(run.scheduler, step.timestep, scale, prediction)
        if float(alpha_bar) >= 1.0:  # σ = 0: no noise left to rescale
            return guidance
        snr = alpha_bar / (1 - alpha_bar)  # 1/σ²
        r = tsr_factor(snr, self.k, self.variance)
        a, b = x0_coefficients(run.scheduler, step.timestep, scale, prediction)
        x = step.model_input.to(prediction.dtype)
        x0 = a * x + b * prediction
        x_sigma = x / alpha_bar.sqrt()  # the latent in σ-space: x₀ + σε
        rescaled = x_sigma + r * (x0 - x_sigma)
        return (rescaled - a * x) / b - base
