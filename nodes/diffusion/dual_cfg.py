"""Dual CFG (ComfyUI's DualCFGGuider): guidance from three prompts, a positive ``cond1``,
a middle ``cond2`` and a negative, each with its own scale.

With predictions p (cond1), m (cond2) and n (negative):

* ``regular``: ``n + cfg_cond2_negative·(m − n) + cfg_conds·(p − m)``: cond2 is guided
  away from the negative, and cond1 from cond2;
* ``nested``: ``t = m + cfg_conds·(p − m)``, then ``n + cfg_cond2_negative·(t − n)``.

Instruct-Pix2Pix's three-way guidance has this form (image-only vs text+image); here the
middle is any conditioning, e.g. a style prompt between the subject and the negative.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nodes.diffusion.extensions import Predictions, SamplerExtension, Step

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.handles import Conditioning
    from nodes.diffusion.sampling import SamplingRun

STYLES = ("regular", "nested")


def dual_cfg(p: torch.Tensor, m: torch.Tensor, n: torch.Tensor, cfg_conds: float,
             cfg_cond2_negative: float, style: str = "regular") -> torch.Tensor:
    """The prediction from the three (see the module docstring)."""
    if style == "nested":
        return n + cfg_cond2_negative * (m + cfg_conds * (p - m) - n)
    return n + cfg_cond2_negative * (m - n) + cfg_conds * (p - m)


class DualCFG(SamplerExtension):
    """Replaces the step's CFG term by :func:`dual_cfg` (later guidance terms stay)."""

    priority = 20  # where Perp-Neg replaces it: after combined conditioning, before SEGA

    def __init__(self, middle: Conditioning, cfg_conds: float, cfg_cond2_negative: float,
                 style: str = "regular"):
        if not middle.entries:
            raise ValueError("Dual CFG needs a cond2 conditioning")
        if len(middle.entries) > 1:
            raise ValueError("Dual CFG's cond2 must be one prompt (not combined or area "
                             "conditioning)")
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}: use {' or '.join(STYLES)}")
        self.middle = middle.entries[0]
        self.cfg_conds, self.cfg_cond2_negative = float(cfg_conds), float(cfg_cond2_negative)
        self.style = style

    def setup(self, run: SamplingRun) -> None:
        if not run.do_cfg:
            raise ValueError("Dual CFG needs the negative prediction: this model samples "
                             "without classifier-free guidance")

    def extra_conditions(self, run: SamplingRun) -> list[Any]:
        return [self.middle]

    def guidance(self, run: SamplingRun, step: Step, preds: Predictions,
                 guidance: torch.Tensor) -> torch.Tensor:
        (middle,) = preds.of(self)
        target = dual_cfg(preds.cond, middle, preds.uncond, self.cfg_conds,
                          self.cfg_cond2_negative, self.style)
        return guidance - run.params.cfg * (preds.cond - preds.uncond) + (target - preds.uncond)
