"""Perp-Neg (Armandpour et al. 2023, "Re-imagine the Negative Prompt Algorithm"): the
negative prompt pushes away only along what it does not share with the positive one.

Each step also predicts the empty prompt ε∅. With pos = ε₊ − ε∅ and neg = ε₋ − ε∅, the
negative's component along pos is removed: perp = neg − (⟨neg, pos⟩ / ‖pos‖²) · pos,
and the prediction is ε∅ + cfg · (pos − neg_scale · perp). A negative that overlaps
the positive ("a dog" / "a cat") then removes only what differs, where plain CFG would
also weaken the subject itself. ComfyUI's PerpNeg / PerpNegGuider compute the same on
the denoised prediction, which is the same step (x₀ is affine in ε at a given x and σ);
the projection here is per image, where ComfyUI's sums over the whole batch (the same
for one image).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nodes.diffusion.extensions import Predictions, SamplerExtension, Step

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.handles import Conditioning
    from nodes.diffusion.sampling import SamplingRun


def perp_neg(cond: torch.Tensor, uncond: torch.Tensor, nocond: torch.Tensor, cfg: float,
             neg_scale: float) -> torch.Tensor:
    """The Perp-Neg prediction from the positive, negative and empty predictions."""
    import torch

    pos, neg = cond - nocond, uncond - nocond
    dims = list(range(1, pos.dim()))
    dot = (neg * pos).sum(dim=dims, keepdim=True)
    norm = (pos * pos).sum(dim=dims, keepdim=True).clamp_min(torch.finfo(pos.dtype).tiny)
    perp = neg - dot / norm * pos
    return nocond + cfg * (pos - neg_scale * perp)


class PerpNeg(SamplerExtension):
    """Perp-Neg guidance: replaces the step's CFG term (other guidance terms added by
    extensions that run after it are kept)."""

    priority = 20  # after combined conditioning fuses the predictions, before SEGA & co.

    def __init__(self, empty: Conditioning, neg_scale: float):
        if not empty.entries:
            raise ValueError("Perp-Neg needs the empty prompt's conditioning "
                             "(CLIP Text Encode of an empty text)")
        self.empty = empty.entries[0]
        self.neg_scale = float(neg_scale)

    def setup(self, run: SamplingRun) -> None:
        if not run.do_cfg:
            raise ValueError("Perp-Neg needs classifier-free guidance: set cfg above 1")

    def extra_conditions(self, run: SamplingRun) -> list[Any]:
        return [self.empty]

    def guidance(self, run: SamplingRun, step: Step, preds: Predictions,
                 guidance: torch.Tensor) -> torch.Tensor:
        (nocond,) = preds.of(self)
        cfg = run.params.cfg
        target = perp_neg(preds.cond, preds.uncond, nocond, cfg, self.neg_scale)
        # the CFG term the sampler started from is replaced; later additions stay
        return guidance - cfg * (preds.cond - preds.uncond) + (target - preds.uncond)
