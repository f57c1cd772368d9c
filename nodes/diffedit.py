"""DiffEdit nodes: a mask from two prompts, and the latent that decodes the edit inside it."""

from __future__ import annotations

from typing import Any

from engine import Environment, ExecutionContext, Input, Node, NodeResult, Output
from nodes.diffusion.handles import Conditioning, DiffusionModel, Latent, Tensor, Vae
from nodes.diffusion.inversion import LatentTrajectory

ALIGNMENTS = ("diffusers", "noise_level")  # nodes.diffusion.diffedit.ALIGNMENTS (light copy)


class DiffEditMask(Node):
    """DiffEdit's mask (Couairon et al. 2022; diffusers' ``StableDiffusionDiffEditPipeline
    .generate_mask``): where the model's noise prediction for the **target** prompt (the
    edit, "a green circle ...") differs from the one for the **source** prompt (what the
    image shows, "a red circle ..."). White = the region to repaint.

    Wire the image to edit (Load Image, or a VAE Decode), its VAE, the MODEL, both prompts
    and an empty negative prompt; the MASK goes to DiffEdit Latent and, to paste the edit
    back, through Mask Blur into Image Composite Masked. The image is encoded as the
    pipeline does (a posterior sample), noised to ``mask_encode_strength`` with
    ``num_maps_per_mask`` draws of ``seed``; the mean |difference| over channels and draws,
    clamped at ``mask_thresholding_ratio`` × its mean, is binarised at half of that clamp.
    The mask is made on the latent grid (1/4 of the image on steerflow-shapes) and upscaled
    without smoothing.

    Ranges: mask_encode_strength 0.3-0.7, ratio 2-4 (lower: larger masks), 5-20 maps (more:
    steadier masks); the defaults are the pipeline's. Prompts that differ only in the
    edited words work best. A stray speck far from the edit: try another seed. Identical
    prompts give an empty mask (and say so). Cost: one UNet pass on a batch of 4 ×
    num_maps_per_mask latents (2 × at cfg 1), far less than the decoding.

    On steerflow-shapes, for a recolour ("red circle" → "green circle"), the default mask
    covers the shape and its rim, often with a speck or two elsewhere.
    """

    TYPE = "DiffEditMask"
    DISPLAY_NAME = "DiffEdit Mask"
    SEARCH_ALIASES = ("mask from prompts", "edit mask")
    CATEGORY = "latent/diffedit"
    OUTPUTS = (Output("MASK"),)

    model: DiffusionModel = Input(type="MODEL")
    vae: Vae = Input(type="VAE")
    image: Tensor = Input(type="IMAGE", description="The image to edit")
    source: Conditioning = Input(type="CONDITIONING",
                                 description="What the image shows (the pipeline's source_prompt)")
    target: Conditioning = Input(type="CONDITIONING",
                                 description="What it should show (target_prompt)")
    seed: int = Input(0, min=0, max=2**63 - 1, control_after_generate=True,
                      description="Draws the posterior samples and the noise maps")
    steps: int = Input(50, min=1, max=1000,
                       description="DDIM schedule the encode strength is a fraction of")
    cfg: float = Input(7.5, min=0.0, max=100.0, step=0.1,
                       description="Guidance of both predictions (guidance_scale); > 1 "
                       "needs the negative")
    num_maps_per_mask: int = Input(10, min=1, max=256,
                                   description="Noise draws averaged into the mask")
    mask_encode_strength: float = Input(0.5, min=0.0, max=1.0, step=0.01,
                                        description="How far the image is noised before "
                                        "the predictions are compared")
    mask_thresholding_ratio: float = Input(3.0, min=0.01, max=100.0, step=0.1,
                                           description="Clamp at this multiple of the mean "
                                           "difference; the mask is above half of it")
    negative: Conditioning | None = Input(type="CONDITIONING", optional=True,
                                          description="Negative of both prompts (an empty "
                                          "prompt, as the pipeline)")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        # (A missing negative with cfg > 1 is an execution error: validation sees constants
        # only, so it cannot tell an unlinked socket from a linked one.)
        problems: list[tuple[str | None, str]] = []
        steps, strength = inputs.get("steps"), inputs.get("mask_encode_strength")
        if steps is not None and strength is not None and int(steps * strength) < 1:
            problems.append(("mask_encode_strength",
                             f"mask_encode_strength {strength} noises the image by no step "
                             f"of {steps}; raise it (0.5 is the pipeline's default)"))
        return problems

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        from nodes.diffusion.diffedit import diffedit_mask, mask_to_image_size

        ctx.check_interrupt()
        result = diffedit_mask(
            self.model, self.vae, self.image, self.source, self.target, self.negative,
            seed=self.seed, steps=self.steps, cfg=self.cfg,
            num_maps_per_mask=self.num_maps_per_mask,
            mask_encode_strength=self.mask_encode_strength,
            mask_thresholding_ratio=self.mask_thresholding_ratio)
        mask = mask_to_image_size(result.mask, self.vae.downscale, self.image.shape[1],
                                  self.image.shape[2]).to(self.image.device)
        ui = None
        if result.empty:
            which = ("the source and target prompts are identical" if len(result.empty)
                     == mask.shape[0] else f"images {list(result.empty)} show no difference")
            message = (f"DiffEdit Mask: the mask is empty ({which}): nothing will be edited; "
                       "change the target prompt's words for the edit")
            ctx.warn(message)  # a node_warning: the canvas and the CLI show it
            ui = {"text": [message]}
        return NodeResult((mask,), ui)


class DiffEditLatent(Node):
    """The latent that decodes DiffEdit's edit: sample it and only the masked region changes
    (diffusers' ``StableDiffusionDiffEditPipeline.__call__``).

    Wire DDIM Inversion's trajectory (the image's VAE Encode inverted with the **source**
    prompt, cfg 1; its ``denoise`` is the pipeline's ``inpaint_strength``, 0.8) and DiffEdit
    Mask's MASK (any MASK of the image's or the latent's size works). Sample the LATENT with
    Sample (Advanced): add_noise disable, ddim (the pipeline's; euler, dpmpp_2m, ... work
    too), the **target** prompt as positive, an empty negative, and link this node's
    ``steps`` and ``start_at_step`` outputs into it. The sampler starts on the inverted
    latent; after every step, outside the mask, the latent becomes the trajectory's, so the
    rest of the image comes back as inverted. For pixel-exact surroundings, paste the
    decoded edit onto the image through the mask (Mask Blur radius 2 → Image Composite
    Masked): on steerflow-shapes the VAE's round trip alone leaves 7% of images under 30 dB
    PSNR outside the edited shape.

    ``alignment`` diffusers (exact parity with the pipeline) puts back the trajectory latent
    the step started from, one noise level above the sampler's, and ends one inversion step
    away from the input latent; noise_level (the paper's) puts back the latent of the level
    the step reaches and ends exactly on it. Anything else on the sampler (SEGA, ControlNet,
    LoRA, SAG) acts inside the mask. Cost: the inversion and the sampling, nothing more.

    On steerflow-shapes (recolour one shape of a generated image; 60 held-out cases, 25
    steps, strength 0.8, cfg 7.5, empty negative): 88% right with paste-back, 77% without
    (most of the rest keep less than 30 dB PSNR outside the shape). Invert at cfg 1: the
    pipeline's 7.5 drops it to 22% (dev cases). An empty negative prompt for the sampling
    beats the source prompt the diffusers docs use (dev: 92% vs 80%).
    """

    TYPE = "DiffEditLatent"
    DISPLAY_NAME = "DiffEdit Latent"
    CATEGORY = "latent/diffedit"
    OUTPUTS = (Output("LATENT"), Output("INT", "steps"), Output("INT", "start_at_step"))

    trajectory: LatentTrajectory = Input(type="LATENT_TRAJECTORY",
                                         description="DDIM Inversion's trajectory output")
    mask: Tensor = Input(type="MASK", description="1 = edit (DiffEdit Mask)")
    alignment: str = Input("diffusers", choices=ALIGNMENTS,
                           description="Which trajectory latent the kept region takes after "
                           "each step: diffusers (the pipeline's) or noise_level (the "
                           "paper's; ends exactly on the input outside the mask)")

    def execute(self, ctx: ExecutionContext) -> tuple[Latent, int, int]:
        from nodes.diffusion.diffedit import diffedit_latent

        latent = diffedit_latent(self.trajectory, self.mask, self.alignment)
        start = self.trajectory.steps - (len(self.trajectory) - 1)
        return latent, self.trajectory.steps, start


NODE_CLASSES = (DiffEditMask, DiffEditLatent)
