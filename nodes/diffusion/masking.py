"""Latent masks: partial diffusion (4-channel UNets) and the 9-channel inpainting concat.

Two mechanisms, both as in diffusers' ``StableDiffusionInpaintPipeline``:

* ``Latent.noise_mask`` → :class:`NoiseMaskBlend`: after every step the input
  latent, noised to the next timestep, is put back where the mask is 0, so the
  unmasked region ends exactly on the input latent. A LATENT may put back something
  else (DiffEdit's latent: a DDIM-inversion trajectory, ``nodes.diffusion.diffedit``).
* ``Latent.inpaint`` → :class:`InpaintConcat`: a 9-channel inpainting UNet gets
  ``[latents, mask, masked_image_latents]`` on its input every step. A latent without
  it gets ComfyUI's stand-in (``implied_inpaint_condition``): its noise mask and
  itself, or, with no noise mask, an all-ones mask and a blank picture's latent.

Masks are resized to the latent grid with nearest-neighbour sampling, like the
pipeline. The inpainting concat uses the mask binarised at 0.5 (what inpainting
models were trained on, and what diffusers feeds them); the noise-mask blend keeps
soft values, so a feathered mask blends new and old latents proportionally
(ComfyUI's behaviour). For a binary mask both equal diffusers exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from nodes.diffusion.concat import ConcatChannels, match_batch
from nodes.diffusion.extensions import SamplerExtension, Step
from nodes.diffusion.handles import DiffusionModel, InpaintCondition, Latent

if TYPE_CHECKING:
    from nodes.diffusion.sampling import SamplingRun

#: in_channels of Stable Diffusion inpainting UNets: 4 latents + 1 mask + 4 masked image.
INPAINT_UNET_CHANNELS = 9


def as_mask4d(mask: torch.Tensor) -> torch.Tensor:
    """A MASK ``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]`` as a float ``[B, 1, H, W]``."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"a mask must be a tensor, got {type(mask).__name__}")
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"a mask must be [B, H, W] (or [B, 1, H, W]), got {tuple(mask.shape)}")
    return mask.float() if not mask.is_floating_point() else mask


def mask_to_latent(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A mask resized to the latent grid ``size`` as ``[B, 1, h, w]``.

    The mask may be at the latent size or at the pixel size of the image the latent
    was encoded from: ``k`` times the latent size, plus the remainder the VAE
    encoder cropped away (the mask is cropped the same way). Nearest-neighbour,
    like diffusers' inpainting pipeline. A mask of another shape is an error.
    """
    mask = as_mask4d(mask)
    (height, width), (h, w) = mask.shape[-2:], size
    k = min(height // h, width // w) if height >= h and width >= w else 0
    if k < 1 or height // k != h or width // k != w:
        raise ValueError(
            f"the mask is {width}x{height} but the latent is {w}x{h}; a mask must be at the "
            f"latent size or at the image size (the latent size times the VAE's downscale)")
    mask = mask[..., : h * k, : w * k]
    return F.interpolate(mask, size=(h, w), mode="nearest") if k > 1 else mask


def binarize(mask: torch.Tensor) -> torch.Tensor:
    """1 where ``mask >= 0.5``, else 0 (diffusers' ``VaeImageProcessor.binarize``)."""
    return (mask >= 0.5).to(mask.dtype)


class NoiseMaskBlend(SamplerExtension):
    """After each step, put back the input latent (noised to the next timestep) where
    the mask is 0, as diffusers' inpainting pipeline does with a 4-channel UNet."""

    priority = 900  # after every other post-step change

    def __init__(self, mask: torch.Tensor):
        self.mask = mask

    def setup(self, run: SamplingRun) -> None:
        latents = run.init_latents
        mask = mask_to_latent(self.mask, tuple(latents.shape[-2:]))
        mask = match_batch(mask, latents.shape[0], "noise mask")
        run.state[self] = mask.to(device=run.device, dtype=run.dtype)

    def kept(self, run: SamplingRun, step: Step) -> torch.Tensor:
        """What the unmasked region is after ``step``: the input latent noised to the next
        timestep (after the last step, the input latent itself)."""
        proper = run.init_latents
        if step.index < step.total - 1:
            next_t = run.timesteps[step.index + 1]
            proper = run.scheduler.add_noise(proper, run.noise, torch.tensor([next_t]))
        return proper

    def post_step(self, run: SamplingRun, step: Step, latents: torch.Tensor) -> torch.Tensor:
        mask = self.mask_at(run, step)
        return (1 - mask) * self.kept(run, step) + mask * latents

    def mask_at(self, run: SamplingRun, step: Step) -> torch.Tensor:
        """The mask for the blend after ``step``, as the run's extensions shape it for the
        timestep the latent is noised to (the next; after the last step, its own)."""
        mask = run.state[self]
        last = step.index >= step.total - 1
        timestep = float(step.timestep if last else run.timesteps[step.index + 1])
        for ext in run.extensions:
            mask = ext.noise_mask(run, timestep, mask)
        return mask

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)


class InpaintConcat(ConcatChannels):
    """Concatenate ``[mask, masked_image_latents]`` after the latents every step
    (diffusers' inpainting pipeline with a 9-channel UNet)."""

    label = "mask and masked image"

    def __init__(self, condition: InpaintCondition):
        self.condition = condition

    def channels(self, run: SamplingRun) -> torch.Tensor:
        latents = run.init_latents
        batch, size = latents.shape[0], tuple(latents.shape[-2:])
        mask = match_batch(binarize(mask_to_latent(self.condition.mask, size)), batch,
                           "inpainting mask")
        masked = self.condition.masked_latents
        if tuple(masked.shape[-2:]) != size:
            raise ValueError(f"the masked image latents are {tuple(masked.shape[-2:])} but the "
                             f"latent is {size}; encode both from the same image")
        masked = match_batch(masked, batch, "masked image")
        return torch.cat([mask.to(masked.dtype), masked], dim=1)


#: ComfyUI's latent of a blank (grey, 0 in -1..1) image for SD's VAE, per channel (scaled):
#: a 9-channel UNet's masked image when the latent carries none and the VAE is unknown.
SD_BLANK_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


def latent_extensions(model: DiffusionModel, latent: Latent) -> list[SamplerExtension]:
    """The extensions a LATENT implies for ``model``: the noise-mask blend and, for a
    9-channel inpainting UNet, the masked-image concat (which such a UNet cannot run
    without): the latent's own inpainting input, else ComfyUI's stand-in for it."""
    extensions: list[SamplerExtension] = []
    if latent.noise_mask is not None:
        # A LATENT may name what its unmasked region keeps instead (DiffEdit's
        # TrajectoryLatent: the inversion trajectory), through ``noise_mask_blend``.
        own = getattr(latent, "noise_mask_blend", None)
        extensions.append(own() if own is not None else NoiseMaskBlend(latent.noise_mask))
    in_channels = int(getattr(model.unet.config, "in_channels", latent.samples.shape[1]))
    if in_channels == INPAINT_UNET_CHANNELS and latent.samples.shape[1] != in_channels:
        condition = latent.inpaint
        if condition is None:
            condition = implied_inpaint_condition(model, latent)
        extensions.append(InpaintConcat(condition))
    return extensions


def implied_inpaint_condition(model: DiffusionModel, latent: Latent) -> InpaintCondition:
    """What a 9-channel UNet sees next to a latent that carries no inpainting input, as
    ComfyUI's ``BaseModel.concat_cond`` makes it.

    With a noise mask (VAE Encode → Set Latent Noise Mask) the mask is the noise mask
    and the masked image the latent itself; without one (text-to-image on an inpainting
    model) the mask is all ones and the masked image a blank (grey) picture's latent:
    the model's own VAE encodes one where the model knows it (diffusers' pipeline with an
    all-ones mask), else SD's VAE's values for it (ComfyUI's constants, 4 channels)."""
    samples = latent.samples
    channels = samples.shape[1]
    if 2 * channels + 1 != INPAINT_UNET_CHANNELS:
        raise ValueError(
            f"this model is a 9-channel inpainting model: it takes a 4-channel latent with a "
            f"mask and a masked image, but the latent has {channels} channels; make the "
            "latent with this model's VAE (VAE Encode (for Inpainting), "
            "InpaintModelConditioning, or VAE Encode + Set Latent Noise Mask)")
    if latent.noise_mask is not None:
        return InpaintCondition(latent.noise_mask, samples)
    ones = samples.new_ones(samples.shape[0], 1, *samples.shape[-2:])
    return InpaintCondition(ones, blank_latent(model, samples))


def blank_latent(model: DiffusionModel, samples: torch.Tensor) -> torch.Tensor:
    """``[1, C, h, w]``: the latent (model space) of a grey picture the size ``samples``
    decode to, encoded with the model's VAE where it is known, else ComfyUI's constants."""
    from nodes.diffusion.continuous_samplers import to_model_latents
    from nodes.diffusion.handles import Vae
    from nodes.diffusion.preview import linked_vae
    from nodes.diffusion.vae_codec import encode_raw

    channels, (h, w) = samples.shape[1], samples.shape[-2:]
    loaded = linked_vae(model.unet)
    if loaded is not None:
        vae = Vae(loaded)
        if vae.latent_channels != channels:
            raise ValueError(
                f"this model's VAE makes {vae.latent_channels}-channel latents but the latent "
                f"has {channels}: make the latent with this model's VAE")
        # 0 in -1..1, contiguous NCHW as the pipeline's masked image: a flat picture is a
        # constant map to the VAE's group norms, which amplify the rounding of its layout
        grey = torch.zeros(1, 3, h * vae.downscale, w * vae.downscale)
        raw = encode_raw(vae, grey).mode().float()
        scaled = raw * vae.scaling_factor
        return to_model_latents(model.scheduler_config, scaled, vae.scaling_factor)
    blank = torch.tensor(SD_BLANK_LATENT, dtype=samples.dtype, device=samples.device)
    return blank.view(1, -1, 1, 1).expand(1, channels, h, w)
