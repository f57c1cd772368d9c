"""Perturbed-Attention Guidance node: attach PAG to a model."""

from __future__ import annotations

from typing import Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import DiffusionModel
from nodes.diffusion.pag import check_layer_ids, parse_layer_ids


class PerturbedAttentionGuidance(Node):
    """Perturbed-Attention Guidance (PAG, Ahn et al. 2024): better structure without
    retraining. Each step also predicts the noise with the chosen self-attention layers
    made blind (identity attention: every token sees only itself) and steers away from
    that degraded prediction by ``scale`` × (cond − perturbed), on top of CFG or alone
    at cfg 1. Matches diffusers' ``StableDiffusionPAGPipeline``.

    Use it well: ``scale`` 1 to 5 (3 is the paper's and diffusers' default; 0 leaves the
    model unchanged; high values oversaturate). ``layers`` are diffusers'
    ``pag_applied_layers``: comma-separated regular expressions searched in the
    self-attention layer names; ``mid`` (the default, the mid block) is the usual
    choice, more ids (``mid, up_blocks.0``) perturb more layers and strengthen the
    effect; an id that matches nothing is an error listing the layers.
    ``adaptive_scale`` lowers the scale as denoising goes on (scale − adaptive_scale ×
    (1000 − t), floored at 0): scale / 1000 fades it out by the last step. Cost: one
    extra batch entry per step (3 entries instead of 2 with CFG, 2 instead of 1
    without); combined positive prompts add one each.
    """

    TYPE = "PerturbedAttentionGuidance"
    DISPLAY_NAME = "Perturbed-Attention Guidance"
    SEARCH_ALIASES = ("PAG", "perturbed attention guidance")
    CATEGORY = "model_patches/unet"  # ComfyUI's category for its node of this name
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    scale: float = Input(3.0, min=0.0, max=100.0, step=0.01,
                         description="PAG scale s (pag_scale); 0 leaves the model unchanged")
    layers: str = Input("mid", description="Self-attention layers to perturb: comma-separated "
                        "regular expressions on their names (pag_applied_layers)")
    adaptive_scale: float = Input(0.0, min=0.0, max=1.0, step=0.0001,
                                  description="Lower the scale by this × (1000 − timestep) "
                                  "(pag_adaptive_scale); 0: constant")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        layers = inputs.get("layers")
        problem = check_layer_ids(layers) if isinstance(layers, str) else None
        return [("layers", problem)] if problem else []

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.pag import PerturbedAttentionGuidance as PAG
        from nodes.diffusion.pag import select_layers, self_attention_layers

        problem = check_layer_ids(self.layers)  # a linked string is not validated before
        if problem:
            raise ValueError(problem)
        layers = select_layers(self_attention_layers(self.model.unet),
                               parse_layer_ids(self.layers))
        if self.scale == 0:
            return (self.model,)  # the pipeline skips PAG entirely at pag_scale 0
        return (self.model.with_extension(PAG(layers, self.scale, self.adaptive_scale)),)


NODE_CLASSES = (PerturbedAttentionGuidance,)
