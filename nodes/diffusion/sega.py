"""Semantic Guidance (SEGA, Brack et al. 2023) as a sampler extension.

Each edit concept adds a noise estimate ε(z_t, c_e) to the CFG batch; its guidance
term γ_e = s_e (ε(z_t, c_e) − ε(z_t)) (sign flipped to remove a concept) is kept
only where |γ_e| reaches the concept's ``threshold`` quantile, weighted, applied
between ``warmup`` and ``cooldown`` steps, and smoothed with momentum
(ν ← β_m ν + (1 − β_m) γ; applied γ + s_m ν). The math follows diffusers'
``SemanticStableDiffusionPipeline`` step for step, so results match it. LEDITS++
(:mod:`nodes.diffusion.ledits_pp`) uses the same concepts and the pieces below
(:func:`concept_guidance`, :func:`stops_at`, :func:`quantile_mask`) with its own masks.

Which settings work depends on the model: the edit must outweigh CFG's pull towards the
prompt (scale ≈ 2-3 x cfg on steerflow-shapes, whose latents are 16x16) and start before
the attribute settles (color: by ~40% of the steps there). ``SegaConcept`` keeps
diffusers' defaults (for SD at 50 steps); the SEGA Concept node's are the default model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodes.diffusion.extensions import Predictions, SamplerExtension, Step
from nodes.diffusion.handles import CondEntry, Tensor

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.sampling import SamplingRun


@dataclass(frozen=True)
class SegaConcept:
    """One edit concept: its prompt embedding and how strongly and when it steers
    (defaults: diffusers')."""

    embeds: Tensor  # a node input's type: pydantic resolves it (see handles.Tensor)
    scale: float = 5.0
    reverse: bool = False  # True removes the concept ("negative" direction)
    warmup_steps: int = 10
    cooldown_steps: int | None = None  # None: never stops
    threshold: float = 0.9
    weight: float = 1.0
    label: str = ""
    # SDXL: the concept's own pooled text embedding (its batch row's ``text_embeds``)
    pooled: Tensor | None = None


def concept_conditions(concepts: Sequence[SegaConcept]) -> list[CondEntry]:
    """The extra batch entries of ``concepts`` (SEGA's and LEDITS++'s
    ``extra_conditions``): each concept's embeddings with its own pooled output."""
    return [CondEntry(c.embeds, {} if c.pooled is None else {"pooled_output": c.pooled})
            for c in concepts]


def concept_guidance(concept: SegaConcept, pred: torch.Tensor, uncond: torch.Tensor
                     ) -> torch.Tensor:
    """γ_e = s_e (ε(z_t, c_e) − ε(z_t)), the sign flipped to remove the concept (SEGA's and
    LEDITS++'s edit term before any masking)."""
    edit = pred - uncond
    if concept.reverse:
        edit = -edit
    return edit * concept.scale


def stops_at(concept: SegaConcept, step: int) -> int:
    """The step from which the concept no longer steers (no cool-down: never, step + 1)."""
    return step + 1 if concept.cooldown_steps is None else concept.cooldown_steps


def quantile_mask(magnitude: torch.Tensor, threshold: float) -> torch.Tensor:
    """Where ``magnitude`` ``[B, C, h, w]`` reaches its ``threshold`` quantile over the
    ``h·w`` entries of each image and channel (bool, same shape)."""
    import torch

    # torch.quantile needs float32 (the pipelines cast there and back too)
    cutoff = torch.quantile(magnitude.flatten(start_dim=2).float(), threshold, dim=2,
                            keepdim=False).to(magnitude.dtype)
    return magnitude >= cutoff[:, :, None, None]


@dataclass
class _SegaState:
    momentum: torch.Tensor | None = None


class SemanticGuidance(SamplerExtension):
    """SEGA: steer towards or away from concepts while sampling (needs CFG > 1)."""

    priority = 200

    def __init__(self, concepts: Sequence[SegaConcept], momentum_scale: float = 0.1,
                 momentum_beta: float = 0.4):
        if not concepts:
            raise ValueError("SEGA needs at least one concept")
        self.concepts = tuple(concepts)
        self.momentum_scale = momentum_scale
        self.momentum_beta = momentum_beta

    def setup(self, run: SamplingRun) -> None:
        if not run.do_cfg:
            raise ValueError("SEGA needs classifier-free guidance: set cfg above 1")
        run.state[self] = _SegaState()
        steps = run.schedule_length
        for concept in self.concepts:  # settings that leave a concept doing nothing
            end = min(steps, concept.cooldown_steps if concept.cooldown_steps is not None
                      else steps)
            if concept.warmup_steps >= end:
                why = (f"its warm-up ({concept.warmup_steps} steps) is not shorter than the "
                       f"run's {steps} steps" if end == steps else
                       f"its cool-down step ({concept.cooldown_steps}) is not after its "
                       f"warm-up ({concept.warmup_steps})")
                run.warn(f"SEGA concept {concept.label[:60]!r} never steers: {why}")

    def extra_conditions(self, run: SamplingRun) -> Sequence[CondEntry]:
        return concept_conditions(self.concepts)

    def guidance(self, run: SamplingRun, step: Step, preds: Predictions,
                 guidance: torch.Tensor) -> torch.Tensor:
        import torch

        state: _SegaState = run.state[self]
        edit_preds = preds.of(self)
        i = run.schedule_index(step)
        if state.momentum is None:
            state.momentum = torch.zeros_like(guidance)
        n = len(edit_preds)
        weights = torch.zeros((n, guidance.shape[0]), device=guidance.device, dtype=guidance.dtype)
        edits = torch.zeros((n, *guidance.shape), device=guidance.device, dtype=guidance.dtype)
        warm: list[int] = []
        for c, (concept, pred) in enumerate(zip(self.concepts, edit_preds, strict=True)):
            if i >= concept.warmup_steps:
                warm.append(c)
            if i >= stops_at(concept, i):
                continue  # this concept's guidance stays zero from its cooldown on
            weights[c, :] = concept.weight
            edit = concept_guidance(concept, pred, preds.whole_uncond)
            # keep only the strongest (1 - threshold) fraction of each latent's entries
            edits[c] = torch.where(quantile_mask(edit.abs(), concept.threshold), edit,
                                   torch.zeros_like(edit))
        if 0 < len(warm) < n:
            # Some concepts are past warm-up: they steer now, normalised among themselves.
            index = torch.tensor(warm, device=guidance.device)
            warm_weights = torch.index_select(weights, 0, index).clamp(min=0)
            # all of them cooled down already (weights 0): they add nothing. diffusers'
            # pipeline divides 0 by 0 there and the whole image becomes NaN.
            total = warm_weights.sum(dim=0)
            warm_weights = warm_weights / torch.where(total > 0, total, torch.ones_like(total))
            guidance = guidance + torch.einsum(
                "cb,cbijk->bijk", warm_weights, torch.index_select(edits, 0, index))
        weights = torch.nan_to_num(weights.clamp(min=0))
        edit = torch.einsum("cb,cbijk->bijk", weights, edits)
        edit = edit + self.momentum_scale * state.momentum
        state.momentum = self.momentum_beta * state.momentum + (1 - self.momentum_beta) * edit
        if len(warm) == n:
            guidance = guidance + edit
        return guidance

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)
