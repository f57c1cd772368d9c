"""Normalized Attention Guidance (Chen et al. 2025, "Normalized Attention Guidance:
Universal Negative Guidance for Diffusion Models"), as ComfyUI's NAGuidance applies it.

In every self-attention layer (after its output projection, where ComfyUI's
``attn1_output_patch`` acts) the conditional entry's output z⁺ is pushed away from the
negative prompt's output z⁻ of the same pass, then renormalised and blended back:

    z̃ = s·z⁺ − (s − 1)·z⁻                    (extrapolate, s = nag_scale)
    ẑ = z̃ · min(‖z̃‖₁/‖z⁺‖₁, τ) / (‖z̃‖₁/‖z⁺‖₁)   (L1 norms over channels, per token)
    z = α·ẑ + (1 − α)·z⁺

The negative prompt's own pass is left as it is. Guidance thus happens inside the
network rather than on its output, which keeps negative prompts working at cfg 1 (and
on few-step, distilled models): there the negative prompt is added to the batch as an
extra entry only for NAG to read. A sampler extension with one attention hook on the one
attention store, so it combines with CFG, SEGA, ControlNets, LoRAs and the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from nodes.diffusion.attention import AttentionCall, AttentionHook, AttentionLayer
from nodes.diffusion.extensions import SamplerExtension

if TYPE_CHECKING:
    from nodes.diffusion.sampling import SamplingRun


def normalized_attention_guidance(z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float,
                                  tau: float, alpha: float) -> torch.Tensor:
    """NAG's z for the conditional tokens (see the module); ``[..., tokens, dim]``."""
    guided = z_pos * scale - z_neg * (scale - 1.0)
    norm_pos = torch.linalg.vector_norm(z_pos, ord=1, dim=-1, keepdim=True).clamp_min(1e-6)
    norm_guided = torch.linalg.vector_norm(guided, ord=1, dim=-1, keepdim=True).clamp_min(1e-6)
    ratio = norm_guided / norm_pos
    normalized = guided * (ratio.clamp_max(tau) / ratio)
    return normalized * alpha + z_pos * (1.0 - alpha)


@dataclass(eq=False)
class _NAGHook(AttentionHook):
    owner: NormalizedAttentionGuidance

    def selects(self, layer: AttentionLayer) -> bool:
        return not layer.cross

    def on_projected(self, call: AttentionCall, output: torch.Tensor) -> torch.Tensor:
        negative = self.owner.negative_role(call.run)
        # only in passes that hold both entries (an extension's own pass may not)
        if "cond" not in call.roles or negative not in call.roles:
            return output
        per_role = output.shape[0] // len(call.roles)

        def rows(role: str) -> slice:
            k = call.roles.index(role)
            return slice(k * per_role, (k + 1) * per_role)

        owner = self.owner
        out = output.clone()
        out[rows("cond")] = normalized_attention_guidance(
            output[rows("cond")], output[rows(negative)], owner.scale, owner.tau, owner.alpha)
        return out


class NormalizedAttentionGuidance(SamplerExtension):
    """NAG on every self-attention layer, against the run's negative prompt."""

    priority = 100
    without_cfg = True  # at cfg <= 1 the negative prompt joins the batch for NAG alone

    def __init__(self, scale: float = 5.0, alpha: float = 0.5, tau: float = 1.5):
        self.scale, self.alpha, self.tau = float(scale), float(alpha), float(tau)
        self._hook = _NAGHook(self)

    def negative_role(self, run: SamplingRun) -> str:
        return "uncond" if run.do_cfg else run.roles_of(self)[0]

    def extra_conditions(self, run: SamplingRun) -> Sequence[Any]:
        return () if run.do_cfg else [run.negative.entries[0]]

    def attention_hooks(self, run: SamplingRun) -> Sequence[AttentionHook]:
        return (self._hook,)
