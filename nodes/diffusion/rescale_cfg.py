"""Rescaled classifier-free guidance (Lin et al. 2023, "Common Diffusion Noise Schedules
and Sample Steps are Flawed", section 3.4) as a sampler extension, and epsilon scaling
(:class:`EpsilonScaling`), the other rescale of the final prediction.

High CFG scales blow up the guided prediction's magnitude (over-exposed, burnt images,
worst with v-prediction / zero-terminal-SNR models). After guidance, the prediction
``ε_cfg`` is rescaled to the standard deviation of the conditional prediction and mixed
back with factor φ:

    ε_rescaled = ε_cfg · std(ε_cond) / std(ε_cfg)
    ε = φ · ε_rescaled + (1 − φ) · ε_cfg

std over every dimension but the batch. This is diffusers' ``rescale_noise_cfg`` (the
pipelines' ``guidance_rescale``), so results match ``StableDiffusionPipeline(...,
guidance_rescale=φ)``. ComfyUI's RescaleCFG node applies the same formula to the
prediction converted to v (from the noise prediction and σ) instead of to the noise
prediction itself; the two differ slightly (the std ratio of v and of ε are not the
same), ours is the paper's and diffusers' noise-space form.

It acts in the ``guidance`` phase after the extensions that add guidance terms (PAG
150, SEGA and LEDITS++ 200, SAG 300; Conditioning Combine's fused predictions come
before them all), as diffusers' PAG pipeline rescales after adding PAG's term; CLIP
guidance (900) and the inversion regulariser (1000) still act on the rescaled
prediction. Only with classifier-free guidance (cfg > 1), as in diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodes.diffusion.extensions import Predictions, SamplerExtension, Step

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.sampling import SamplingRun


def rescale_guided(prediction: torch.Tensor, cond: torch.Tensor, multiplier: float
                   ) -> torch.Tensor:
    """``prediction`` rescaled towards ``cond``'s std by ``multiplier`` (φ)."""
    dims = list(range(1, prediction.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_cfg = prediction.std(dim=dims, keepdim=True)
    rescaled = prediction * (std_cond / std_cfg)
    return multiplier * rescaled + (1 - multiplier) * prediction


class RescaleCFG(SamplerExtension):
    """Rescale the guided prediction to the conditional one's std by ``multiplier``."""

    # After every guidance term (PAG 150, SEGA 200, SAG 300); before CLIP guidance (900)
    # and the inversion regulariser (1000), which act on the final prediction.
    priority = 800

    def __init__(self, multiplier: float = 0.7):
        if not 0.0 <= multiplier <= 1.0:
            raise ValueError("RescaleCFG's multiplier must lie in 0..1")
        self.multiplier = float(multiplier)

    def guidance(self, run: SamplingRun, step: Step, preds: Predictions,
                 guidance: torch.Tensor) -> torch.Tensor:
        if not run.do_cfg or not self.multiplier:
            return guidance
        # the step's prediction is uncond + guidance: return the term that gives the
        # rescaled prediction
        rescaled = rescale_guided(preds.uncond + guidance, preds.cond, self.multiplier)
        return rescaled - preds.uncond


class EpsilonScaling(SamplerExtension):
    """Epsilon scaling (Ning et al. 2024, "Elucidating the Exposure Bias in Diffusion
    Models"): the step's final noise prediction is divided by ``scaling_factor`` (a
    little above 1), which offsets the exposure bias that makes a sampler's latents
    carry more noise than the schedule assumes; ComfyUI's "Epsilon Scaling" does the
    same on x − x₀. For ε-prediction models."""

    priority = 950  # after every guidance term and the CFG rescale: the final prediction

    def __init__(self, scaling_factor: float = 1.005):
        if scaling_factor <= 0:
            raise ValueError("scaling_factor must be above 0")
        self.scaling_factor = float(scaling_factor)

    def setup(self, run: SamplingRun) -> None:
        kind = run.scheduler.config.get("prediction_type", "epsilon")
        if kind != "epsilon":
            raise ValueError(f"Epsilon Scaling scales a noise (ε) prediction; this model "
                             f"predicts {kind!r}")

    def guidance(self, run: SamplingRun, step: Step, preds: Predictions,
                 guidance: torch.Tensor) -> torch.Tensor:
        base = preds.uncond if run.do_cfg else preds.cond
        return (base + guidance) / self.scaling_factor - base
