"""Semantic Guidance nodes: build edit concepts, attach SEGA to a model."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.conditioning import encode_text_pooled
from nodes.diffusion.handles import DiffusionModel, TextEncoder
from nodes.diffusion.sega import SegaConcept, SemanticGuidance


class SEGAConcept(Node):
    """One SEGA edit concept: steer the image towards (add) or away from (remove) a text
    while sampling, without changing the prompt. Chain several through previous.

    What works:
    - To change something the prompt names, describe the subject both ways and use the
      same settings for both: add the prompt as it should be, remove the prompt as it is
      (on "a red circle at the top left": add "a blue circle at the top left", remove
      "a red circle at the top left"). The two texts differ only in what changes, so the
      edit is that change alone. A bare word ("blue" / "red") is only partly that
      direction and also pulls towards some generic shape, which moves outlines. On
      steerflow-shapes, replacing a colour (96 held-out prompts, scale 15): 92% with the
      two descriptions, 71% with the bare colour words.
    - Remove the old value too: an add alone leaves the prompt's own word pulling back
      through CFG (the description added alone: 68% on 96 dev prompts, and 9 of the
      96 kept the old colour).
    - Scale must outweigh CFG's pull: 15 on steerflow-shapes (cfg 7.5; 15-20 for bare
      words). At 5 nothing visible changes; from about 30, colors overshoot and shapes
      break or multiply.
    - Warm-up: about 10-15% of the steps (2 of 20, 3 of 25). This model settles the
      layout in the first steps and the color by about step 8 of 20; a warm-up of half
      the steps is too late at any scale.
    - Threshold 0.5 (keeps the stronger half of the latent entries); 0.9 works for
      strong edits but fails more often on this model's small 16x16 latents.
    - Stable Diffusion 1.x at 50 steps (diffusers' defaults and example, not measured
      here): scale 4-6, warm-up 10, threshold 0.9-0.99, momentum 0.1-0.3.
    """

    TYPE = "SEGAConcept"
    DISPLAY_NAME = "SEGA Concept"
    SEARCH_ALIASES = ("semantic guidance concept", "SEGA edit")
    CATEGORY = "conditioning/sega"
    OUTPUTS = (Output("SEGA_CONCEPTS", "concepts"),)

    # Defaults tuned on the default model at KSampler's 20 steps (the docstring has
    # diffusers' values for SD); scripts/sega_grid.py measures them.
    clip: TextEncoder = Input(type="CLIP")
    text: str = Input("", multiline=True,
                      description="The concept. To change what the prompt names, the "
                                  "prompt as it should be (add) and as it is (remove)")
    direction: str = Input("add", choices=("add", "remove"),
                           description="Steer towards (add) or away from (remove) the concept")
    scale: float = Input(15.0, min=0.0, max=100.0, step=0.1,
                         description="Edit guidance scale s_e: 15 on steerflow-shapes, "
                                     "4-6 on SD")
    warmup_steps: int = Input(2, min=0, max=10000,
                              description="Steps before the concept steers (momentum builds "
                                          "meanwhile): 2 of 20 on steerflow-shapes, "
                                          "10 of 50 on SD")
    cooldown_steps: int = Input(10000, min=0, max=10000,
                                description="Step from which the concept stops (>= steps: never)")
    threshold: float = Input(0.5, min=0.0, max=1.0, step=0.01,
                             description="Quantile of |guidance| below which entries are "
                                         "dropped: 0.5 on steerflow-shapes, 0.9-0.99 on SD")
    weight: float = Input(1.0, min=0.0, max=100.0, step=0.1,
                          description="Relative weight among concepts")
    previous: tuple[SegaConcept, ...] | None = Input(
        type="SEGA_CONCEPTS", optional=True,
        description="Concepts before this one (to replace a colour: add the new, remove the old)")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        text = inputs.get("text")  # a linked text is checked when it arrives
        if isinstance(text, str) and not text.strip():
            return [("text", "a SEGA concept needs text: what to add or remove")]
        return []

    def execute(self, ctx: ExecutionContext) -> tuple[tuple[SegaConcept, ...]]:
        if not self.text.strip():
            raise ValueError("a SEGA concept needs text")
        embeds, pooled = encode_text_pooled(self.clip, self.text)
        concept = SegaConcept(
            embeds=embeds, pooled=pooled, scale=self.scale,
            reverse=self.direction == "remove", warmup_steps=self.warmup_steps,
            cooldown_steps=self.cooldown_steps, threshold=self.threshold, weight=self.weight,
            label=self.text)
        return ((*(self.previous or ()), concept),)


class ApplySEGA(Node):
    """Attach Semantic Guidance (SEGA) to a model; the sampler applies it (needs cfg > 1).

    Each concept adds one UNet batch entry per step. Momentum carries the edit from step
    to step: diffusers' defaults (0.1, 0.4) suit steerflow-shapes (0.3, 0.6, diffusers'
    SD example, did not help there).
    On steerflow-shapes with SEGA Concept's defaults, workflows/sega.json turns the red
    circle blue at every seed tried (16 of 16). Replacing the color a prompt names
    (add the new color, remove the old one) works for about 3 prompts in 4: the new color
    shows in 90-96%, but the shape changes with it in about 1 in 5 (writing the new color
    into the prompt instead keeps it in 94-98%). See SEGA Concept for settings that work.
    """

    TYPE = "ApplySEGA"
    DISPLAY_NAME = "Apply SEGA"
    SEARCH_ALIASES = ("semantic guidance", "semantic stable diffusion")
    # it patches the MODEL the sampler uses, like SAG/PAG/FABRIC; the concepts stay in
    # conditioning/sega
    CATEGORY = "model_patches/unet"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL", description="The model the sampler uses")
    concepts: tuple[SegaConcept, ...] = Input(
        type="SEGA_CONCEPTS", description="SEGA Concept nodes, chained through their previous")
    momentum_scale: float = Input(0.1, min=0.0, max=10.0, step=0.01,
                                  description="How much accumulated momentum is added (s_m)")
    momentum_beta: float = Input(0.4, min=0.0, max=0.999, step=0.01,
                                 description="Momentum decay (beta_m)")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        sega = SemanticGuidance(self.concepts, self.momentum_scale, self.momentum_beta)
        return (replace(self.model, extensions=(*self.model.extensions, sega)),)


NODE_CLASSES = (SEGAConcept, ApplySEGA)
