"""LEDITS++ nodes: invert a real image edit-friendly, then edit it with SEGA concepts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import Conditioning, DiffusionModel, Latent, Tensor, Vae
from nodes.diffusion.ledits_pp import SAMPLERS, LEditsInversion, twin_problem
from nodes.diffusion.schedulers import SCHEDULES, unsupported_combination
from nodes.diffusion.sega import SegaConcept
from nodes.inversion import patches_explained

if TYPE_CHECKING:
    import torch


class LEditsPPInvert(Node):
    """LEDITS++ step 1: invert a real image so that it can be edited (Brack et al. 2024;
    diffusers' ``LEditsPPPipelineStableDiffusion.invert``). Step 2 is Apply LEDITS++.

    Wire the image's LATENT (VAE Encode), an empty-prompt CONDITIONING as ``negative`` and,
    optionally, a ``source_prompt`` describing the image. Then sample with
    **KSamplerAdvanced**: model from Apply LEDITS++, this node's ``latent``, the same
    sampler_name and scheduler, and ``steps``, ``start_at_step`` and ``cfg`` linked from
    this node's outputs; add_noise disable; positive = the source prompt (the empty one
    without a source prompt), negative = the empty prompt. Sampled that way without edit
    concepts, the image comes back (DDIM: exactly; DPM-Solver++: its last step ends on
    the UNet's own estimate). Other sampler settings are an error that names the right
    ones. (The pipeline edits with the empty prompt at cfg 1 even after a guided
    inversion; wire that if you want its behaviour.)

    How it works: the image is noised to each of the last ``num_inversion_steps`` steps
    of an ``int(num_inversion_steps * (1 + skip))``-step schedule with independent noise
    (``seed``); per step, the noise map that makes the sampler's stochastic step land on
    the next noised image is kept (DPM-Solver++ 2M SDE, the pipeline's default, or DDIM
    with eta 1: edit-friendly DDPM). ``skip`` leaves out the noisiest steps: larger keeps
    more of the image (layout, textures), smaller allows larger changes.

    On steerflow-shapes: 30 steps, skip 0.4, the image's caption as source prompt at 3.5
    (the pipeline's defaults but for skip, 0.15 there). Cost: one UNet pass per inverted step
    (a batch of two with a source prompt); the edit costs as much again plus one batch
    entry per concept.
    """

    TYPE = "LEditsPPInvert"
    DISPLAY_NAME = "LEDITS++ Inversion"
    CATEGORY = "sampling/ledits_pp"
    OUTPUTS = (Output("LATENT", "latent"), Output("LEDITS_INVERSION", "inversion"),
               Output("INT", "steps"), Output("INT", "start_at_step"), Output("FLOAT", "cfg"))

    model: DiffusionModel = Input(type="MODEL")
    latent: Latent = Input(type="LATENT", description="The image's latent (VAE Encode)")
    negative: Conditioning = Input(type="CONDITIONING",
                                   description="The unconditional prompt (usually empty)")
    num_inversion_steps: int = Input(30, min=1, max=1000,
                                     description="Steps inverted and later sampled")
    skip: float = Input(0.4, min=0.0, max=0.95, step=0.01,
                        description="Fraction of the schedule's noisiest steps left out: "
                                    "0.4 on steerflow-shapes, 0.1-0.2 on SD")
    source_guidance_scale: float = Input(3.5, min=0.0, max=100.0, step=0.1,
                                         description="Guidance by the source prompt (> 1); "
                                                     "the edit samples with it (cfg output)")
    seed: int = Input(0, min=0, max=2**64 - 1,
                      description="Seed of the independent noise per step")
    sampler_name: str = Input("dpmpp_2m_sde", choices=SAMPLERS)
    scheduler: str = Input("ddim_uniform", choices=tuple(SCHEDULES),
                           description="Timestep spacing (ddim_uniform: the pipeline's "
                                       "leading spacing)")
    source_prompt: Conditioning | None = Input(type="CONDITIONING", optional=True,
                                               description="Describes the image (its "
                                                           "caption on steerflow-shapes)")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        sampler, schedule = inputs.get("sampler_name"), inputs.get("scheduler")
        if sampler is None or schedule is None:  # linked: checked when it runs
            return []
        problem = unsupported_combination(sampler, schedule) or twin_problem(sampler, schedule)
        return [("scheduler", problem)] if problem else []

    def execute(self, ctx: ExecutionContext
                ) -> tuple[Latent, LEditsInversion, int, int, float]:
        from dataclasses import replace

        from nodes.diffusion.ledits_pp import edit_friendly_invert

        def on_step(step: int, total: int, latents: torch.Tensor) -> None:
            ctx.progress(step, total)  # also honours an interrupt

        ctx.check_interrupt()
        with patches_explained(self.model, "LEDITS++ Inversion"):
            start, inversion = edit_friendly_invert(
                self.model, self.negative, self.source_prompt, self.latent,
                self.num_inversion_steps, self.skip, self.source_guidance_scale, self.seed,
                self.sampler_name, self.scheduler, callback=on_step)
        latent = replace(self.latent, samples=start, noise_mask=None, extension_results=())
        guided = self.source_prompt is not None and self.source_guidance_scale > 1.0
        cfg = self.source_guidance_scale if guided else 1.0
        return latent, inversion, inversion.steps, inversion.start_at_step, cfg


class ApplyLEditsPP(Node):
    """LEDITS++ step 2: attach the edit of an inverted image to a model (see LEDITS++
    Inversion for the sampler's settings). The edit is SEGA's semantic guidance: chain
    SEGA Concept nodes, each adding or removing a text with its scale, warm-up, cool-down
    and threshold (their ``weight`` is not used: the pipeline has none). The sampler
    replays the inversion's noise maps, so what no concept touches stays as it was.

    Implicit masks keep each concept's guidance where it acts (per step, from the
    concept's ``threshold``): both options off, the noise mask: the strongest
    ``1 - threshold`` of the latent's pixels (|guidance| summed over channels);
    ``use_cross_attn_mask``: the concept's cross-attention (smoothed, at 1/4 of the latent
    size); ``use_intersect_mask`` (the pipeline's default): both at once (the attention
    alone at timesteps above 800). ``user_mask`` (MASK at the image or latent size; another
    size is stretched, with a warning) limits
    every concept to where it is 1.

    On steerflow-shapes, to recolour a shape: add the image's caption with the new colour
    and remove the caption itself, scale 4, warm-up 0, threshold 0.95, both masks off
    (this model understands whole captions, not lone words; its cross-attention marks the
    shapes poorly). That recolours the shape in 98% of held-out cases; with its kind, the
    other shapes and PSNR >= 30 dB outside it kept, in 76% (workflows/ledits_pp.json;
    striped and noisy backgrounds lose some texture); pasting the edit back onto the image
    through LEDITS++ Edit Mask keeps the rest exactly: 86%. Stable Diffusion 1.x (the
    pipeline's defaults, not measured here): short concepts, scale 5-10, threshold
    0.75-0.9, intersect mask. Cost: one UNet batch entry per concept and step.
    """

    TYPE = "ApplyLEditsPP"
    DISPLAY_NAME = "Apply LEDITS++"
    SEARCH_ALIASES = ("LEDITS", "ledits pp", "real image semantic edit")
    CATEGORY = "sampling/ledits_pp"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    inversion: LEditsInversion = Input(type="LEDITS_INVERSION")
    concepts: tuple[SegaConcept, ...] = Input(type="SEGA_CONCEPTS")
    use_cross_attn_mask: bool = Input(False, description="Mask by the concept's "
                                      "cross-attention (implied by use_intersect_mask)")
    use_intersect_mask: bool = Input(False, description="Mask by cross-attention AND the "
                                     "guidance's strongest pixels (the pipeline's default "
                                     "for SD; off on steerflow-shapes)")
    user_mask: Tensor | None = Input(type="MASK", optional=True,
                                     description="Edit only where this mask is 1")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.ledits_pp import LEditsPPGuidance

        if not self.concepts:
            raise ValueError("Apply LEDITS++ needs at least one SEGA Concept")
        user_mask = None if self.user_mask is None else self._fitted_mask(ctx)
        edit = LEditsPPGuidance(self.concepts, self.inversion, self.use_cross_attn_mask,
                                self.use_intersect_mask, user_mask)
        return (self.model.with_extension(edit),)


    def _fitted_mask(self, ctx: ExecutionContext) -> Tensor:
        """``user_mask`` at the inverted latent's size: from the latent or the image size
        exactly (the pipeline's), else stretched with a warning, as other mask inputs."""
        import torch.nn.functional as F

        from nodes.diffusion.concat import match_batch
        from nodes.diffusion.masking import as_mask4d, mask_to_latent

        zs = self.inversion.zs
        size = (int(zs.shape[-2]), int(zs.shape[-1]))
        try:
            mask = mask_to_latent(self.user_mask, size)
        except ValueError:
            mask = as_mask4d(self.user_mask).float()
            ctx.warn(f"user_mask is {mask.shape[-1]}x{mask.shape[-2]}, neither the image's nor "
                     f"the latent's size ({size[1]}x{size[0]}): it is stretched to fit")
            mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
        return match_batch(mask, int(zs.shape[-4]), "user_mask", "inverted image batch")


class LEditsPPEditMask(Node):
    """Where a LEDITS++ edit acted: the union, over the steps and concepts, of the implicit
    masks its guidance was limited to (white = edited), at the image's size.

    Wire the LATENT that KSamplerAdvanced sampled with Apply LEDITS++ and the VAE that
    decodes it. To keep everything else exactly as it was, paste the decoded edit onto the
    original image with Image Composite Masked (destination: the original image; source:
    the VAE Decode; mask: this one); the VAE's round trip and the sampler's small drift
    outside the edit are then gone. Grow Mask or Blur Mask in between widen or soften the
    seam (the mask is made on the latent grid and upscaled without smoothing).

    On steerflow-shapes (recolour one shape, held-out): the paste-back raises the cases
    with the shape recoloured, everything else kept and PSNR >= 30 dB outside it from 76%
    to 86% (workflows/ledits_pp.json).
    """

    TYPE = "LEditsPPEditMask"
    DISPLAY_NAME = "LEDITS++ Edit Mask"
    CATEGORY = "sampling/ledits_pp"
    OUTPUTS = (Output("MASK"),)

    samples: Latent = Input(type="LATENT", description="KSamplerAdvanced's output, sampled "
                            "with the model from Apply LEDITS++")
    vae: Vae = Input(type="VAE", description="The VAE that decodes the samples (sets the "
                     "mask's size)")

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        from nodes.diffusion.diffedit import mask_to_image_size
        from nodes.diffusion.ledits_pp import EDIT_REGION

        region = self.samples.extension_result(EDIT_REGION)
        if region is None:
            raise ValueError("LEDITS++ Edit Mask needs the LATENT a sampler made with the "
                             "model from Apply LEDITS++ (KSamplerAdvanced's output); this "
                             "one did not come from such a run")
        height, width = (int(n) * self.vae.downscale for n in region.shape[-2:])
        mask = mask_to_image_size(region[:, 0], self.vae.downscale, height, width)
        return (mask.clamp(0, 1),)


NODE_CLASSES = (LEditsPPInvert, ApplyLEditsPP, LEditsPPEditMask)
