"""Combined conditioning (ComfyUI's Conditioning Combine, composable diffusion's AND):
each extra entry is evaluated as an extra batch entry, and the noise predictions of
a conditioning's entries are averaged, weighted by each entry's ``strength`` option."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from nodes.diffusion.extensions import Predictions, SamplerExtension, Step
from nodes.diffusion.handles import Conditioning

if TYPE_CHECKING:
    from nodes.diffusion.sampling import SamplingRun


def _strength(options: dict) -> float:
    return float(options.get("strength", 1.0))


class CombinedConditioning(SamplerExtension):
    """Average the predictions of every entry of the positive and negative conditioning."""

    priority = 10  # before guidance-changing extensions, which then see the averages

    def __init__(self, positive: Conditioning, negative: Conditioning):
        self.positive = positive.entries
        self.negative = negative.entries

    def setup(self, run: SamplingRun) -> None:
        if not run.do_cfg:
            raise ValueError("combined conditioning needs classifier-free guidance: "
                             "set cfg above 1")

    def extra_conditions(self, run: SamplingRun) -> Sequence[torch.Tensor]:
        return [e.embeds for e in (*self.positive[1:], *self.negative[1:])]

    def predictions(self, run: SamplingRun, step: Step, preds: Predictions) -> None:
        extra = preds.of(self)
        n_pos = len(self.positive) - 1
        preds.cond = _weighted([preds.cond, *extra[:n_pos]], self.positive)
        preds.uncond = _weighted([preds.uncond, *extra[n_pos:]], self.negative)


def _weighted(preds: Sequence[torch.Tensor], entries: Sequence) -> torch.Tensor:
    if len(preds) == 1:
        return preds[0]
    weights = [_strength(e.options) for e in entries]
    total = sum(weights)
    if total <= 0:
        raise ValueError("combined conditioning strengths must sum to more than 0")
    return sum(w * p for w, p in zip(weights, preds, strict=True)) / total
