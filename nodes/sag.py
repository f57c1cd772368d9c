"""Self-Attention Guidance node: attach SAG to a model."""

from __future__ import annotations

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import DiffusionModel


class SelfAttentionGuidance(Node):
    """Self-Attention Guidance (SAG, Hong et al. 2022): guidance that needs no prompt
    and no training, steering each step away from a version of the image blurred
    where the UNet's self-attention concentrates (for finer, more coherent detail).

    Each step, the mid block's self-attention map of the unconditional pass marks
    the regions the image attends to most; the predicted clean image is blurred
    there, noised back to the step's level and denoised once more, and the step moves
    away from that degraded prediction by ``scale``. It works with CFG (on the
    unconditional pass, as the paper's equation 25) and without it (cfg 1: on the
    conditional pass), with every sampler, and together with SEGA, ControlNet,
    LoRA and inpainting in the same run.

    Using it well: ``scale`` about 0.3 to 1.0 (ComfyUI's default 0.5, diffusers' and
    the paper's 0.75); larger values guide harder, negative ones push towards the
    blur, 0 turns it off (no extra pass). ``blur_sigma`` is the Gaussian's sigma in
    latent pixels over a 9x9 kernel: 1.0 is diffusers' pipeline, 2.0 ComfyUI's default
    (a stronger blur over the same kernel). Cost: one extra UNet pass (one image, the
    unconditional prompt) per step. It is meant for models that draw fine detail; on
    the flat shapes of the default model it changes little (README).
    """

    TYPE = "SelfAttentionGuidance"
    DISPLAY_NAME = "Self-Attention Guidance"
    SEARCH_ALIASES = ("SAG", "self attention guidance")
    CATEGORY = "model_patches/unet"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    scale: float = Input(0.5, min=-2.0, max=5.0, step=0.01,
                         description="Guidance scale s (0 turns SAG off)")
    blur_sigma: float = Input(2.0, min=0.1, max=10.0, step=0.1,
                              description="Sigma of the 9x9 Gaussian blur, in latent pixels")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.sag import SelfAttentionGuidance as SAG

        return (self.model.with_extension(SAG(self.scale, self.blur_sigma)),)


NODE_CLASSES = (SelfAttentionGuidance,)
