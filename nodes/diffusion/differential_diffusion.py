"""Differential Diffusion (Levin & Fried 2023): a soft mask as a per-pixel amount of
change. Each step repaints only the pixels whose mask value reaches a threshold that falls
from 1 at the first step to 0 at the end, so a pixel at 0.3 is regenerated over the last
30% of the steps (what ComfyUI's node does with its timestep threshold).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nodes.diffusion.extensions import SamplerExtension

if TYPE_CHECKING:
    import torch


class DifferentialDiffusion(SamplerExtension):
    """Threshold the noise mask at ``timestep / first timestep`` each step; ``strength``
    below 1 blends that binary mask with the soft one."""

    def __init__(self, strength: float = 1.0):
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"Differential Diffusion strength must be 0..1, got {strength}")
        self.strength = float(strength)

    def noise_mask(self, run: Any, timestep: float, mask: torch.Tensor) -> torch.Tensor:
        first = float(run.timesteps[0]) if len(run.timesteps) else 0.0
        threshold = timestep / first if first > 0 else 0.0
        binary = (mask >= threshold).to(mask.dtype)
        return self.strength * binary + (1.0 - self.strength) * mask
