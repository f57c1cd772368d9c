"""CLIP guidance node: steer sampling towards a text or an image with a CLIP's gradient."""

from __future__ import annotations

from typing import Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.clip_vision import ClipVision
from nodes.diffusion.handles import DiffusionModel, Tensor, Vae

CROPS = ("center", "none")


class CLIPGuidance(Node):
    """CLIP-guided sampling (the gradient guidance of Disco Diffusion, GLID-3-XL and
    diffusers' community ``CLIPGuidedStableDiffusion``): at chosen steps the sampler
    decodes its current guess of the clean image with the VAE, measures with a CLIP how
    far it is from the target (spherical distance of the normalised embeddings), and adds
    the gradient of that distance with respect to the latent to the noise prediction,
    on top of CFG and any other guidance.

    Wire: ``model`` from the checkpoint (or LoRA/SAG/...), ``clip_vision`` from Load CLIP
    Vision (a whole CLIP such as ``steerflow-shapes-clip.safetensors`` for a ``text``
    target; an image tower alone is enough for an ``image`` target), ``vae`` the
    checkpoint's VAE (it decodes the guess); give either ``text`` or ``image`` as the
    target, not both. Use its MODEL in the sampler; it works with every sampler, with
    and without CFG, and with SEGA, ControlNet, LoRA, SAG and masks in the same run.

    Using it well: ``clip_guidance_scale`` multiplies the loss; 0 turns it off. On the
    default model 100-1000 steers (300 is a good start); the community pipeline uses 100
    for SD at 512 px. Too high a scale makes artefacts that please CLIP rather than a
    better picture: raise it until the target shows. Layout and colour are decided early,
    so guiding the first half to two thirds of the steps (``end_percent`` 0.5-0.7) keeps
    most of the effect at a fraction of the cost. Cost of a guided step: a UNet pass, a
    VAE decode and a CLIP image pass (one per cutout), each forward and backward; about
    4-5x a plain step on the tiny model when every step is guided. ``every_n_steps`` 2-3
    halves or thirds that. ``through_unet`` off skips the UNet pass (the prediction is
    held fixed: cheaper, but the noisiest steps then get far too large a gradient, so
    start later with ``start_percent`` 0.2-0.3). ``num_cutouts`` 0 shows CLIP the whole
    image (``crop``: centre square or squashed, as CLIP Vision Encode); 4-16 random
    square crops (sides from half to all of the short side, seeded by ``cutout_seed``
    and the step) average the loss over views: steadier for large or non-square images,
    slower.

    On the default model (every 2nd step of the first 60%), of 100 held-out two-shape
    prompts the plain model gets wrong (mostly small crosses and stars drawn as blobs),
    guiding toward the prompt fixes 28 at scale 300 and 21 at scale 1000; guiding toward
    another prompt instead fixes 23 and 7: at 300 most of the gain is the nudge itself,
    at 1000 the CLIP's direction is what helps (README).
    """

    TYPE = "CLIPGuidance"
    DISPLAY_NAME = "CLIP Guidance"
    SEARCH_ALIASES = ("CLIP guided", "clip guided diffusion")
    CATEGORY = "model_patches/unet"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    clip_vision: ClipVision = Input(type="CLIP_VISION")
    vae: Vae = Input(type="VAE", description="Decodes each guided step's predicted image")
    text: str = Input("", multiline=True,
                      description="Text target (needs a CLIP with a text tower); leave "
                      "empty for an image target")
    clip_guidance_scale: float = Input(300.0, min=0.0, max=10000.0, step=1.0,
                                       description="Scale of the CLIP loss's gradient (0: off)")
    every_n_steps: int = Input(1, min=1, max=1000,
                               description="Guide steps 0, n, 2n, ... (fewer: faster)")
    start_percent: float = Input(0.0, min=0.0, max=1.0, step=0.01,
                                 description="First step guided, as a fraction of the steps")
    end_percent: float = Input(1.0, min=0.0, max=1.0, step=0.01,
                               description="Guide steps before this fraction of the steps")
    num_cutouts: int = Input(0, min=0, max=64,
                             description="Random square crops CLIP sees (0: the whole image)")
    cutout_seed: int = Input(0, min=0, max=2**32 - 1, description="Seed of the cutouts")
    crop: str = Input("center", choices=list(CROPS),
                      description="Whole-image view: centre square or squashed (none)")
    through_unet: bool = Input(True, description="Differentiate through a UNet pass too (as "
                               "the community pipeline); off: hold the prediction fixed "
                               "(cheaper, cruder early on)")
    image: Tensor | None = Input(type="IMAGE", optional=True,
                                 description="Image target (instead of text)")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        start, end = inputs.get("start_percent"), inputs.get("end_percent")
        if isinstance(start, float | int) and isinstance(end, float | int) and start > end:
            return [("end_percent", f"end_percent ({end}) is below start_percent ({start}): "
                     "no step would be guided")]
        return []

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.clip_guidance import ClipGuidance, check_prediction_type, target_embeds

        text = self.text.strip()
        if text and self.image is not None:
            raise ValueError("CLIP Guidance takes one target: clear 'text' or unlink "
                             "'image'")
        if not text and self.image is None:
            raise ValueError("CLIP Guidance needs a target: type a 'text' or link an "
                             "'image'")
        if self.start_percent > self.end_percent:
            raise ValueError("end_percent is below start_percent: no step would be guided")
        unet_channels = int(self.model.unet.config.out_channels)
        if self.vae.latent_channels != unet_channels:
            raise ValueError(
                f"this VAE makes {self.vae.latent_channels}-channel latents but the model "
                f"denoises {unet_channels}-channel ones: link the checkpoint's own VAE")
        if self.image is not None and self.image.shape[0] == 0:
            raise ValueError("the image target is an empty batch")

        check_prediction_type(self.model.scheduler_config.get("prediction_type", "epsilon"))
        if self.clip_guidance_scale == 0:
            return (self.model,)
        target = target_embeds(self.clip_vision, text, self.image, self.crop)
        extension = ClipGuidance(
            self.clip_vision, self.vae, target, self.clip_guidance_scale,
            every_n_steps=self.every_n_steps, start_percent=self.start_percent,
            end_percent=self.end_percent, num_cutouts=self.num_cutouts,
            cutout_seed=self.cutout_seed, crop=self.crop, through_unet=self.through_unet)
        return (self.model.with_extension(extension),)


NODE_CLASSES = (CLIPGuidance,)
