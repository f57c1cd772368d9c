"""FABRIC node: attach liked/disliked feedback images to a model."""

from __future__ import annotations

from typing import Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import DiffusionModel, Tensor, TextEncoder, Vae


class FABRICFeedback(Node):
    """FABRIC (von Rütte et al. 2023): steer generation towards images you liked and
    away from images you disliked, with no training, through the UNet's self-attention.

    Each step the feedback images, noised to the step's level, go through the UNet once
    with the empty prompt; the image being made then attends to their self-attention
    tokens as well as its own: the conditional prediction to the liked images', the
    unconditional one to the disliked images', the feedback's attention weighted. Matches
    diffusers' community ``FabricPipeline`` (its weights, window and cond/uncond
    assignment; the feedback latents are the VAE's mode, not a sample).

    Wiring: model, clip (encodes the empty prompt) and vae from the checkpoint; ``liked``
    and ``disliked`` take IMAGE batches (Load Image joined by Batch Images, or a previous
    round's VAE Decode, so a graph can feed its own outputs back in rounds). With neither
    linked (the first round, before anything is liked) it samples as without FABRIC and
    warns. Images of another size than the generation are resized to it. Chain the
    MODEL with SEGA, SAG, PAG, LoRA, a ControlNet or a mask as usual.

    Using it well: 2 to 4 liked images; the best feedback is the model's own outputs (a
    previous round), which share its features. Liked and disliked together work better
    than liked alone: CFG then amplifies what the liked images have and the disliked
    lack (like the blue outputs, dislike the others). Disliked images need cfg > 1.
    ``max_weight`` is the weight inside the window ``feedback_start_ratio``..
    ``feedback_end_ratio`` (fractions of the steps; the pipeline's 0.8 over 0.33..0.66),
    ``min_weight`` outside it (0.05; 0 skips the feedback pass there), ``neg_scale``
    scales the disliked weight (0.5); the bottleneck scales raise or lower the weight
    towards the mid block. Weights are per feedback token, so n images at weight w take
    about n·w/(1 + n·w) of a layer's attention. Colours and layout are settled in the
    first third of the steps, where the weight is ``min_weight``: at cfg 7.5 keep it low
    (0.02-0.05); 0.3 and more there breaks images on steerflow-shapes (CFG multiplies
    the conditional pass's change). Cost: one extra UNet pass over the feedback batch
    per step (while the weight is above 0) and self-attention over (1 + n) times the
    tokens. On the default model (held-out, colour-less prompts, 100 each) 3 liked blue
    images of its own raise blue from 3% to 17%, with 3 disliked of other colours to
    39%; 3 disliked red ones do not lower red (17% → 16%).
    """

    TYPE = "FABRICFeedback"
    DISPLAY_NAME = "FABRIC Feedback"
    SEARCH_ALIASES = ("feedback", "liked images", "disliked images")
    CATEGORY = "model_patches/unet"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    clip: TextEncoder = Input(type="CLIP")
    vae: Vae = Input(type="VAE")
    liked: Tensor | None = Input(type="IMAGE", optional=True,
                                 description="Images to steer towards (a batch)")
    disliked: Tensor | None = Input(type="IMAGE", optional=True,
                                    description="Images to steer away from (needs cfg > 1)")
    min_weight: float = Input(0.05, min=0.0, max=10.0, step=0.01,
                              description="Feedback weight outside the window (0: no "
                                          "feedback pass there)")
    max_weight: float = Input(0.8, min=0.0, max=10.0, step=0.01,
                              description="Feedback weight inside the window")
    neg_scale: float = Input(0.5, min=0.0, max=10.0, step=0.01,
                             description="Disliked images' weight relative to liked ones")
    feedback_start_ratio: float = Input(0.33, min=0.0, max=1.0, step=0.01,
                                        description="Window start, fraction of the steps")
    feedback_end_ratio: float = Input(0.66, min=0.0, max=1.0, step=0.01,
                                      description="Window end, fraction of the steps")
    pos_bottleneck_scale: float = Input(1.0, min=0.0, max=10.0, step=0.01,
                                        description="Liked weight at the mid block, "
                                                    "relative (linear from the outer blocks)")
    neg_bottleneck_scale: float = Input(1.0, min=0.0, max=10.0, step=0.01,
                                        description="Disliked weight at the mid block, "
                                                    "relative")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        from nodes.diffusion.fabric import check_weights

        errors: list[tuple[str | None, str]] = []
        values = [inputs.get(k) for k in ("min_weight", "max_weight", "feedback_start_ratio",
                                          "feedback_end_ratio")]
        if all(isinstance(v, (int, float)) for v in values):
            problem = check_weights(*values)
            if problem:
                errors.append(problem)
        return errors

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.conditioning import encode_text
        from nodes.diffusion.fabric import FABRIC

        # The first round has no feedback yet: it samples as without FABRIC (the paper's
        # round 1), and says so, rather than failing before there is anything to like
        if self.liked is None and self.disliked is None:
            ctx.warn("FABRIC has no feedback yet, so this round samples without it: link "
                     "liked or disliked images (the Gallery's Like / Dislike fill a Load "
                     "Image Batch) to steer the next")
            return (self.model,)
        extension = FABRIC(
            self.vae, encode_text(self.clip, ""), self.liked, self.disliked,
            min_weight=self.min_weight, max_weight=self.max_weight, neg_scale=self.neg_scale,
            feedback_start_ratio=self.feedback_start_ratio,
            feedback_end_ratio=self.feedback_end_ratio,
            pos_bottleneck_scale=self.pos_bottleneck_scale,
            neg_bottleneck_scale=self.neg_bottleneck_scale)
        return (self.model.with_extension(extension),)


class ImageBatch(Node):
    """Put two IMAGE batches into one (e.g. several loaded images as FABRIC's liked
    batch); ``image2`` is fitted to ``image1``'s size when they differ (bilinear after a
    centre crop) and an RGB one gets an opaque alpha beside RGBA, as ComfyUI's node of
    this name (Batch Images takes any number)."""

    TYPE = "ImageBatch"
    DISPLAY_NAME = "Image Batch (two images)"
    CATEGORY = "image"
    OUTPUTS = (Output("IMAGE"),)

    image1: Tensor = Input(type="IMAGE")
    image2: Tensor = Input(type="IMAGE")

    def execute(self, ctx: ExecutionContext) -> tuple[Tensor]:
        from nodes.batch_grow import batch_images

        return (batch_images([self.image1, self.image2], ["image1", "image2"]),)


NODE_CLASSES = (FABRICFeedback, ImageBatch)
