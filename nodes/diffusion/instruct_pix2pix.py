"""Instruct-Pix2Pix (Brooks et al. 2023) as a sampler extension, with the math of
diffusers' ``StableDiffusionInstructPix2PixPipeline``.

An Instruct-Pix2Pix UNet takes 8 input channels: the noisy latents and the latents of
the image to edit (the VAE posterior's *mode*, not multiplied by the scaling factor, as
``prepare_image_latents`` makes them). The prompt is the instruction ("make the circle
blue"). Guidance is three-way over the batch the pipeline calls
``[text+image, negative+image, negative+zeros]``::

    ε = ε(∅, ∅) + s_T · (ε(text, image) − ε(∅, image)) + s_I · (ε(∅, image) − ε(∅, ∅))

with the sampler's ``cfg`` as the text scale ``s_T`` and ``image_cfg`` as ``s_I``.

Here the sampler's batch is ``[uncond, cond, extra]``: the ``uncond`` row is the
negative prompt with zero image latents, ``cond`` the prompt with the image, and the
extension's own ``extra`` row the negative prompt with the image. In ``predictions``
the negative-with-image prediction takes the unconditional slot, so the sampler's CFG
term is the text guidance ``s_T (ε(text, image) − ε(∅, image))`` and every text-side
technique in the run (SEGA concepts, SAG, combined prompts) is relative to the image-
conditioned prediction; ``guidance`` adds ``(s_I − 1)(ε(∅, image) − ε(∅, ∅))``. The sum
is the pipeline's ε. Every row except ``uncond`` sees the image (SEGA's concepts, PAG's
perturbed row, SAG's degraded pass).

``image_cfg`` = 1 is ComfyUI's Instruct-Pix2Pix sampling (both conditionings carry the
image, plain two-way CFG): the zero-image row is not needed, so it is not run (two UNet
rows per step instead of three). As in ComfyUI, where a conditioning without the image
latents gets zeros on those channels, a negative that does not carry this extension
(Dual CFG Guider's plain negative in ComfyUI's CosXL-edit recipe: cond1 and cond2 from
InstructPixToPixConditioning, the negative straight from the text encoder) sees zeros;
that recipe is then the pipeline's three-way guidance with ``cfg_conds`` = s_T and
``cfg_cond2_negative`` = s_I. Without CFG (cfg ≤ 1) the batch is the prompt with the
image alone, as in the pipeline. The pipeline also switches guidance off when
``image_guidance_scale`` < 1 (its ``do_classifier_free_guidance``), silently ignoring
the text scale; here the formula keeps applying (below 1 the output follows the input
image less), so parity holds for ``image_cfg`` ≥ 1. diffusers 0.42's pipeline has no
special case for σ-space schedulers (Euler, ...): ``scale_model_input`` runs on the
latents before the image latents are concatenated, exactly as the sampler does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from nodes.diffusion.concat import ConcatChannels
from nodes.diffusion.extensions import Predictions, Step
from nodes.diffusion.vae_codec import encode_raw

if TYPE_CHECKING:
    from nodes.diffusion.handles import Conditioning, Vae
    from nodes.diffusion.sampling import SamplingRun

#: in_channels of Instruct-Pix2Pix UNets: 4 latents + 4 image latents.
IP2P_UNET_CHANNELS = 8
#: the pipeline's default ``image_guidance_scale``
DEFAULT_IMAGE_CFG = 1.5


def image_latents(vae: Vae, pixels: torch.Tensor) -> torch.Tensor:
    """IMAGE ``[B, H, W, C]`` in 0..1 → the UNet's image input ``[B, C, h, w]``: the VAE
    posterior's mode, unscaled (the pipeline's ``prepare_image_latents``).

    An image whose sides are not multiples of the VAE's downscale is centre-cropped to
    them, as ComfyUI's node does (the pipeline resizes instead).
    """
    if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4:
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ValueError(f"pixels must be an IMAGE [B, H, W, C], got {shape}")
    if pixels.shape[-1] not in (1, 3, 4):
        raise ValueError(f"pixels must have 1, 3 or 4 channels, got {pixels.shape[-1]}")
    factor = vae.downscale
    height, width = pixels.shape[1] // factor * factor, pixels.shape[2] // factor * factor
    if height == 0 or width == 0:
        raise ValueError(f"the image is {pixels.shape[2]}x{pixels.shape[1]}: the VAE needs at "
                         f"least {factor}x{factor} pixels (sides are cropped to multiples of "
                         f"{factor})")
    top, left = (pixels.shape[1] - height) // 2, (pixels.shape[2] - width) // 2
    pixels = pixels[:, top:top + height, left:left + width]
    pixels = pixels[..., :3] if pixels.shape[-1] != 1 else pixels.expand(-1, -1, -1, 3)
    return encode_raw(vae, pixels.permute(0, 3, 1, 2) * 2 - 1).mode()


class InstructPix2Pix(ConcatChannels):
    """The input image's latents on the UNet's extra channels, and three-way guidance.

    One object is attached to both conditionings (the sampler runs it once).
    """

    # Before CombinedConditioning (10) so that the combined prompts average the
    # image-conditioned predictions, and before every guidance-changing extension.
    priority = 5
    label = "input image"

    def __init__(self, latents: torch.Tensor, image_cfg: float = DEFAULT_IMAGE_CFG):
        self.latents = latents
        self.image_cfg = float(image_cfg)

    @property
    def three_way(self) -> bool:
        """Whether the zero-image row is needed (``image_cfg`` ≠ 1)."""
        return self.image_cfg != 1.0

    def setup(self, run: SamplingRun) -> None:
        expected = int(run.model.unet.config.in_channels)
        # the latents and the input image's, as diffusers checks (8 on SD's 4-channel VAE)
        wanted = int(run.init_latents.shape[1]) + int(self.latents.shape[1])
        if expected != wanted:
            raise ValueError(
                f"this model's UNet takes {expected} input channels: InstructPixToPix"
                f"Conditioning needs an Instruct-Pix2Pix model ({wanted} channels here: "
                "the latents and the input image's), e.g. steerflow-shapes-ip2p")
        super().setup(run)

    def channels(self, run: SamplingRun) -> torch.Tensor:
        return self.latents

    def channels_for_role(self, run: SamplingRun, role: str,
                          channels: torch.Tensor) -> torch.Tensor:
        if role == "uncond" and (self.three_way or not self._on(run.negative)):
            return torch.zeros_like(channels)
        return channels

    def _on(self, conditioning: Conditioning) -> bool:
        """Whether ``conditioning`` carries this image (else its row sees zeros)."""
        return any(ext is self for entry in conditioning.entries
                   for ext in entry.options.get("extensions", ()))

    def extra_conditions(self, run: SamplingRun) -> Sequence[torch.Tensor]:
        # the negative prompt again, seeing the image (the pipeline's middle row)
        return [run.negative.embeds] if self.three_way else ()

    def predictions(self, run: SamplingRun, step: Step, preds: Predictions) -> None:
        if not self.three_way:
            return
        (image,) = preds.of(self)
        run.state[(self, "uncond")] = preds.uncond  # ε(∅, ∅), for the image term
        preds.uncond = image

    def guidance(self, run: SamplingRun, step: Step, preds: Predictions,
                 guidance: torch.Tensor) -> torch.Tensor:
        if not self.three_way:
            return guidance
        (image,) = preds.of(self)
        return guidance + (self.image_cfg - 1.0) * (image - run.state[(self, "uncond")])

    def teardown(self, run: SamplingRun) -> None:
        super().teardown(run)
        run.state.pop((self, "uncond"), None)

