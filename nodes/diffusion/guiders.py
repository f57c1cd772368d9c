"""Guidance variants on the noise prediction, as diffusers' guiders compute them
(``diffusers.guiders``): Adaptive Projected Guidance, CFG-Zero* and Tangential CFG.

Each replaces the step's CFG term ``cfg · (ε₊ − ε₋)`` with its own; guidance terms that
other extensions add after it are kept. ComfyUI's APG, CFGZeroStar and TCFG nodes compute on
the denoised prediction instead, so their images differ (APG's ``norm_threshold`` is a
norm of the noise-prediction difference here, of the x₀ difference there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodes.diffusion.extensions import Predictions, SamplerExtension, Step

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.sampling import SamplingRun


class _ReplacesCFG(SamplerExtension):
    """Base: swap the plain CFG prediction for :meth:`guided` (needs CFG)."""

    priority = 25  # after combined conditioning and Perp-Neg, before SEGA & co.
    name = "this guidance"

    def setup(self, run: SamplingRun) -> None:
        if not run.do_cfg:
            raise ValueError(f"{self.name} needs classifier-free guidance: set cfg above 1")

    def guided(self, run: SamplingRun, cond: torch.Tensor, uncond: torch.Tensor
               ) -> torch.Tensor:
        raise NotImplementedError

    def guidance(self, run: SamplingRun, step: Step, preds: Predictions,
                 guidance: torch.Tensor) -> torch.Tensor:
        target = self.guided(run, preds.cond, preds.uncond)
        plain = run.params.cfg * (preds.cond - preds.uncond)
        return guidance - plain + (target - preds.uncond)


class AdaptiveProjectedGuidance(_ReplacesCFG):
    """APG (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High Guidance
    Scales"): the guidance direction ε₊ − ε₋, optionally averaged with ``momentum`` over
    the steps and capped at ``norm_threshold`` (its L2 norm per image), is split along the
    conditional prediction; the parallel part, which oversaturates, is scaled by ``eta``.
    diffusers' ``normalized_guidance``."""

    name = "APG"

    def __init__(self, eta: float = 1.0, norm_threshold: float = 0.0,
                 momentum: float = 0.0):
        self.eta, self.norm_threshold, self.momentum = float(eta), float(norm_threshold), \
            float(momentum)

    def setup(self, run: SamplingRun) -> None:
        super().setup(run)
        run.state[self] = None  # the running average (diffusers' MomentumBuffer)

    def guided(self, run: SamplingRun, cond: torch.Tensor, uncond: torch.Tensor
               ) -> torch.Tensor:
        import torch

        diff = cond - uncond
        dims = list(range(1, diff.dim()))
        if self.momentum:
            previous = run.state[self]
            diff = diff if previous is None or previous.shape != diff.shape \
                else diff + self.momentum * previous
            run.state[self] = diff
        if self.norm_threshold > 0:
            norm = diff.norm(p=2, dim=dims, keepdim=True)
            diff = diff * torch.minimum(torch.ones_like(norm), self.norm_threshold / norm)
        v0, v1 = diff.double(), torch.nn.functional.normalize(cond.double(), dim=dims)
        parallel = (v0 * v1).sum(dim=dims, keepdim=True) * v1
        update = (v0 - parallel).to(diff.dtype) + self.eta * parallel.to(diff.dtype)
        return uncond + run.params.cfg * update

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)


class CFGZeroStar(_ReplacesCFG):
    """CFG-Zero* (Fan et al. 2025): the unconditional prediction is first scaled by the
    factor that best matches it to the conditional one, α = ⟨ε₊, ε₋⟩ / ‖ε₋‖² (per image),
    then CFG: α·ε₋ + cfg · (ε₊ − α·ε₋). diffusers' ``ClassifierFreeZeroStarGuidance`` (no
    zero-initialised steps, as ComfyUI's node)."""

    name = "CFG-Zero*"

    def guided(self, run: SamplingRun, cond: torch.Tensor, uncond: torch.Tensor
               ) -> torch.Tensor:

        c, u = cond.flatten(1).float(), uncond.flatten(1).float()
        alpha = (c * u).sum(1, keepdim=True) / ((u ** 2).sum(1, keepdim=True) + 1e-8)
        scaled = uncond * alpha.to(cond.dtype).view(-1, *(1,) * (cond.dim() - 1))
        return scaled + run.params.cfg * (cond - scaled)


class TangentialCFG(_ReplacesCFG):
    """TCFG (Kwon et al. 2025, "Tangential Damping Classifier-free Guidance"): the
    unconditional prediction keeps only its component along the first singular direction
    of the (conditional, unconditional) pair, damping the part of it that points off the
    data manifold, then plain CFG. diffusers' ``TangentialClassifierFreeGuidance``."""

    name = "TCFG"

    def guided(self, run: SamplingRun, cond: torch.Tensor, uncond: torch.Tensor
               ) -> torch.Tensor:
        import torch

        pair = torch.stack([cond, uncond], dim=1).float().flatten(2)
        _, _, vh = torch.linalg.svd(pair, full_matrices=False)
        first = vh[:, :1]  # [B, 1, N]: the first right-singular vector
        flat = uncond.reshape(uncond.shape[0], 1, -1).float()
        damped = (flat @ first.transpose(-2, -1) @ first).reshape(uncond.shape)
        damped = damped.to(cond.dtype)
        return damped + run.params.cfg * (cond - damped)
