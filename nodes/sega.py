"""Semantic Guidance nodes: build edit concepts, attach SEGA to a model."""

from __future__ import annotations

from dataclasses import replace

from engine import ExecutionContext, Input, Node, Output
from nodes.conditioning import encode_text
from nodes.diffusion.handles import DiffusionModel, TextEncoder
from nodes.diffusion.sega import SegaConcept, SemanticGuidance


class SEGAConcept(Node):
    """One SEGA edit concept (chain several through ``previous``)."""

    TYPE = "SEGAConcept"
    DISPLAY_NAME = "SEGA Concept"
    CATEGORY = "conditioning/sega"
    OUTPUTS = (Output("SEGA_CONCEPTS", "concepts"),)

    clip: TextEncoder = Input(type="CLIP")
    text: str = Input("", multiline=True, description="The concept, e.g. 'glasses'")
    direction: str = Input("add", choices=("add", "remove"),
                           description="Steer towards (add) or away from (remove) the concept")
    scale: float = Input(5.0, min=0.0, max=100.0, step=0.1,
                         description="Edit guidance scale s_e")
    warmup_steps: int = Input(10, min=0, max=10000,
                              description="Steps before the concept starts steering")
    cooldown_steps: int = Input(10000, min=0, max=10000,
                                description="Step from which the concept stops (>= steps: never)")
    threshold: float = Input(0.9, min=0.0, max=1.0, step=0.01,
                             description="Quantile of |guidance| below which entries are dropped")
    weight: float = Input(1.0, min=0.0, max=100.0, step=0.1,
                          description="Relative weight among concepts")
    previous: tuple[SegaConcept, ...] | None = Input(type="SEGA_CONCEPTS", optional=True)

    def execute(self, ctx: ExecutionContext) -> tuple[tuple[SegaConcept, ...]]:
        if not self.text.strip():
            raise ValueError("a SEGA concept needs text")
        concept = SegaConcept(
            embeds=encode_text(self.clip, self.text), scale=self.scale,
            reverse=self.direction == "remove", warmup_steps=self.warmup_steps,
            cooldown_steps=self.cooldown_steps, threshold=self.threshold, weight=self.weight,
            label=self.text)
        return ((*(self.previous or ()), concept),)


class ApplySEGA(Node):
    """Attach Semantic Guidance to a model; the sampler applies it (with CFG > 1)."""

    TYPE = "ApplySEGA"
    DISPLAY_NAME = "Apply SEGA"
    CATEGORY = "conditioning/sega"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    concepts: tuple[SegaConcept, ...] = Input(type="SEGA_CONCEPTS")
    momentum_scale: float = Input(0.1, min=0.0, max=10.0, step=0.01,
                                  description="How much accumulated momentum is added (s_m)")
    momentum_beta: float = Input(0.4, min=0.0, max=0.999, step=0.01,
                                 description="Momentum decay (beta_m)")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        sega = SemanticGuidance(self.concepts, self.momentum_scale, self.momentum_beta)
        return (replace(self.model, extensions=(*self.model.extensions, sega)),)


NODE_CLASSES = (SEGAConcept, ApplySEGA)
