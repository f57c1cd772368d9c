"""DiffEdit (Couairon et al. 2022): mask from two prompts, DDIM inversion, masked decoding.

The three stages of diffusers' ``StableDiffusionDiffEditPipeline``, step for step:

* ``generate_mask`` → :func:`diffedit_mask`: the image latent (sampled from the VAE's
  posterior with the seeded generator, as the pipeline encodes it) is noised to
  ``mask_encode_strength`` with ``num_maps_per_mask`` noise draws; the CFG noise
  predictions for the source and the target prompt differ where the edit must happen.
  Their mean |difference| over channels and draws, clamped at
  ``mask_thresholding_ratio`` × its mean and binarised at half of that, is the mask.
* ``invert`` → the DDIM Inversion node (:mod:`nodes.diffusion.inversion`).
* ``__call__`` → :class:`TrajectoryLatent` + :class:`TrajectoryMaskBlend`: the sampler
  starts on the inverted latent and, after every step, puts back the inversion
  trajectory's latent outside the mask (the noise-mask blend of
  :mod:`nodes.diffusion.masking` with the trajectory as what it keeps).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from nodes.diffusion.handles import Conditioning, DiffusionModel, Latent, Vae
from nodes.diffusion.lora import lora_patched
from nodes.diffusion.masking import NoiseMaskBlend
from nodes.diffusion.vae_codec import encode_raw

if TYPE_CHECKING:
    from nodes.diffusion.extensions import Step
    from nodes.diffusion.inversion import LatentTrajectory
    from nodes.diffusion.sampling import SamplingParams, SamplingRun

log = logging.getLogger(__name__)

#: What the kept region takes after a step: ``diffusers`` — the trajectory latent the step
#: started from (the pipeline's indexing, one noise level above the sampler's); or
#: ``noise_level`` — the one at the level the step reaches (the paper's; the last step
#: keeps the clean input latent itself).
ALIGNMENTS = ("diffusers", "noise_level")


@dataclass(frozen=True)
class DiffEditMaskResult:
    """The mask ``[B, h, w]`` (0/1, latent size) and the images it is empty for."""

    mask: torch.Tensor
    empty: tuple[int, ...]


def encode_timestep(scheduler: Any, steps: int, strength: float) -> torch.Tensor:
    """The timestep ``strength`` of a ``steps``-step schedule starts at (the pipeline's
    ``get_timesteps``); ``scheduler.set_timesteps`` must have been called."""
    count = min(int(steps * strength), steps)
    if count < 1:
        raise ValueError(f"mask_encode_strength {strength} noises the image by no step of "
                         f"{steps}; raise it (0.5 is the pipeline's default)")
    return scheduler.timesteps[(steps - count) * scheduler.order]


def image_to_vae_input(vae: Vae, image: torch.Tensor) -> torch.Tensor:
    """IMAGE ``[B, H, W, C]`` in 0..1 → ``[B, 3, h, w]`` in -1..1, cropped to a multiple of
    the VAE's downscale as VAE Encode crops it."""
    from nodes.limits import check_image

    factor = vae.downscale
    check_image(image, "image", (3, 4))  # RGB (alpha dropped); at least one image
    h, w = image.shape[1] // factor * factor, image.shape[2] // factor * factor
    if h == 0 or w == 0:
        raise ValueError(f"the image is smaller than the VAE's downscale factor {factor}")
    return image[:, :h, :w, :3].permute(0, 3, 1, 2) * 2 - 1


@torch.no_grad()
@lora_patched  # the MODEL's LoRA patches act on the mask's UNet pass too
def diffedit_mask(model: DiffusionModel, vae: Vae, image: torch.Tensor, source: Conditioning,
                  target: Conditioning, negative: Conditioning | None, *, seed: int,
                  steps: int = 50, cfg: float = 7.5, num_maps_per_mask: int = 10,
                  mask_encode_strength: float = 0.5, mask_thresholding_ratio: float = 3.0
                  ) -> DiffEditMaskResult:
    """DiffEdit's mask of where ``target`` differs from ``source`` on ``image``.

    As ``StableDiffusionDiffEditPipeline.generate_mask`` with a DDIM scheduler, except
    that each image of a batch is thresholded on its own mean (the pipeline uses one
    mean over the batch; the same for one image). The pipeline unpacks ``encode_prompt``'s
    (positive, negative) reversed, so its guided predictions point away from each prompt:
    with one negative for both, its difference is (cfg − 1)/cfg times ours and the
    normalised mask the same (the tests compare masks exactly); at cfg ≤ 1 it cannot run.
    One plain UNet pass: the MODEL's LoRA acts, sampler extensions (ControlNet, SEGA, ...)
    do not.
    """
    from diffusers.utils.torch_utils import randn_tensor

    from nodes.diffusion.prompt_weighting import match_token_lengths
    from nodes.diffusion.schedulers import make_scheduler
    from nodes.diffusion.sdxl import added_conditioning

    unet = model.unet
    device, dtype = unet.device, unet.dtype
    if int(unet.config.in_channels) != vae.latent_channels:
        raise ValueError(f"the UNet takes {unet.config.in_channels} input channels, the VAE "
                         f"makes {vae.latent_channels}: DiffEdit needs a plain (not an "
                         "inpainting) model")
    do_cfg = cfg > 1.0
    if do_cfg and negative is None:
        raise ValueError("cfg > 1 needs a negative conditioning (an empty prompt, as the "
                         "pipeline's default)")
    n = num_maps_per_mask
    pixels = image_to_vae_input(vae, image)
    batch = pixels.shape[0]
    # The pipeline draws the posterior samples, then the noise, from one generator.
    generator = torch.Generator("cpu").manual_seed(seed)
    pixels = pixels.repeat_interleave(n, dim=0).to(device=vae.vae.device, dtype=vae.vae.dtype)
    latents = encode_raw(vae, pixels).sample(generator) * vae.scaling_factor
    latents = latents.to(device=device, dtype=dtype)
    scheduler = make_scheduler("ddim", "normal", model.scheduler_config)
    scheduler.set_timesteps(steps, device=device)
    t = encode_timestep(scheduler, steps, mask_encode_strength)
    noise = randn_tensor(tuple(latents.shape), generator=generator, device=device, dtype=dtype)
    noisy = scheduler.add_noise(latents, noise, t)

    def rows(cond: Conditioning) -> torch.Tensor:  # one row per (image, draw), as pixels
        embeds = cond.embeds.to(device=device, dtype=dtype)
        if batch % embeds.shape[0]:
            raise ValueError(f"a conditioning has a batch of {embeds.shape[0]} but the image "
                             f"has {batch}; use one prompt or one per image")
        return embeds.repeat_interleave(batch * n // embeds.shape[0], dim=0)

    pairs = [(negative, source), (negative, target)] if do_cfg else [(source,), (target,)]
    embeds = torch.cat(match_token_lengths([rows(c) for pair in pairs for c in pair]))
    chunks = 2 * len(pairs[0])
    model_input = scheduler.scale_model_input(torch.cat([noisy] * chunks), t)
    # SDXL: each chunk takes its own prompt's pooled and size rows (one mechanism, sdxl.py)
    added = added_conditioning(
        model, Conditioning((*source.entries, *target.entries)),
        negative if negative is not None else Conditioning(()), tuple(latents.shape[-2:]),
        device, dtype)
    roles = ["uncond", "cond"] * 2 if do_cfg else ["cond"] * 2
    extra = {} if added is None else {"added_cond_kwargs": added.kwargs(embeds, roles)}
    pred = unet(model_input, t, encoder_hidden_states=embeds, return_dict=False, **extra)[0]
    if do_cfg:
        neg_src, src, neg_tgt, tgt = pred.chunk(4)
        src = neg_src + cfg * (src - neg_src)
        tgt = neg_tgt + cfg * (tgt - neg_tgt)
    else:
        src, tgt = pred.chunk(2)
    guidance_map = (tgt - src).abs().reshape(batch, n, *tgt.shape[-3:]).mean([1, 2])
    clamp = guidance_map.mean(dim=(1, 2), keepdim=True) * mask_thresholding_ratio
    # No difference anywhere (identical prompts) is 0/0 in the pipeline, which then masks
    # everything; an empty mask changes nothing, which is what such prompts ask for.
    if torch.equal(source.embeds, target.embeds):
        clamp = torch.zeros_like(clamp)
    safe = torch.where(clamp > 0, clamp, torch.ones_like(clamp))
    semantic = torch.minimum(guidance_map, clamp) / safe
    mask = (semantic > 0.5).float() * (clamp > 0)
    empty = tuple(int(i) for i in torch.nonzero(clamp.flatten() <= 0).flatten())
    return DiffEditMaskResult(mask, empty)


def mask_to_image_size(mask: torch.Tensor, factor: int, height: int, width: int
                       ) -> torch.Tensor:
    """A latent-size mask ``[B, h, w]`` as a MASK ``[B, H, W]``: nearest upscaling by the
    VAE's ``factor`` (so resizing it back to the latent grid gives it exactly), edge
    pixels repeated over what VAE Encode crops away."""
    up = F.interpolate(mask[:, None].float(), scale_factor=factor, mode="nearest")
    pad_h, pad_w = height - up.shape[-2], width - up.shape[-1]
    if pad_h or pad_w:
        up = F.pad(up, (0, pad_w, 0, pad_h), mode="replicate")
    return up[:, 0]


def window_start(params: SamplingParams) -> int:
    """The schedule step a sampling window begins at (as ``prepare_timesteps`` cuts it)."""
    from nodes.diffusion.sampling import denoise_start

    return max(params.start_step, 0, denoise_start(params.steps, params.denoise))


class TrajectoryMaskBlend(NoiseMaskBlend):
    """DiffEdit's mask guidance: after each step, outside the mask, the latent is the
    inversion trajectory's (diffusers' ``StableDiffusionDiffEditPipeline.__call__``:
    ``latents * mask + image_latents[i] * (1 - mask)``)."""

    def __init__(self, mask: torch.Tensor, trajectory: LatentTrajectory,
                 alignment: str = "diffusers"):
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, not {alignment!r}")
        super().__init__(mask)
        self.trajectory = trajectory
        self.alignment = alignment

    def setup(self, run: SamplingRun) -> None:
        trajectory, params = self.trajectory, run.params
        steps, covered = trajectory.steps, trajectory.steps - (len(trajectory) - 1)
        if params.steps != steps:
            raise ValueError(f"the trajectory was inverted over a {steps}-step schedule but "
                             f"the sampler runs {params.steps} steps; use the same steps "
                             "(DiffEdit Latent's steps output)")
        if params.add_noise:
            raise ValueError("DiffEdit's latent is the inverted, already noisy latent: sample "
                             "it with Sample (Advanced), add_noise disable, start_at_step "
                             f"{covered} (DiffEdit Latent's start_at_step output)")
        if len(run.scheduler.timesteps) != steps:
            raise ValueError("this sampler evaluates the model more than once per step; "
                             "DiffEdit needs one evaluation per step (ddim, the pipeline's; "
                             "euler, dpmpp_2m, uni_pc, ...)")
        from nodes.sampling_advanced import FinalDenoise

        if any(isinstance(ext, FinalDenoise) for ext in run.extensions):
            # it would keep the sampler's input latent, the noisy inverted one, outside the mask
            raise ValueError("a DiffEdit latent cannot stop early without leftover noise: set "
                             "end_at_step to the last step, or return_with_leftover_noise "
                             "enable and finish in a second sampler")
        first = window_start(params)
        if first < covered:
            raise ValueError(f"the trajectory covers start_at_step {covered}..{steps} of a "
                             f"{steps}-step schedule; the sampler starts at step {first}")
        samples = trajectory.latents[0]
        if tuple(samples.shape) != tuple(run.init_latents.shape):
            raise ValueError(f"the trajectory's latents are {tuple(samples.shape)} but the "
                             f"sampled latent is {tuple(run.init_latents.shape)}")
        super().setup(run)

    def kept(self, run: SamplingRun, step: Step) -> torch.Tensor:
        from nodes.diffusion.sampling import model_input_scale

        done = window_start(run.params) + step.index  # the schedule step just taken
        index = self.trajectory.steps - done - (self.alignment == "noise_level")
        latent = self.trajectory.latents[index].to(device=run.device, dtype=run.dtype)
        # trajectory latents are in the UNet's (VP) space; σ-space samplers hold x·sqrt(σ²+1)
        scale = model_input_scale(run.scheduler, run.timesteps[min(step.index + 1,
                                                                   step.total - 1)])
        return latent / scale


@dataclass(frozen=True)
class TrajectoryLatent(Latent):
    """LATENT for DiffEdit's decoding: ``samples`` is the inverted latent; outside
    ``noise_mask`` the sampler keeps ``trajectory`` (a LATENT_TRAJECTORY) step by step."""

    trajectory: Any = None
    alignment: str = "diffusers"

    def noise_mask_blend(self) -> NoiseMaskBlend:
        """The noise-mask blend this latent asks of the sampler (masking.latent_extensions)."""
        if self.trajectory is None:
            return NoiseMaskBlend(self.noise_mask)
        return TrajectoryMaskBlend(self.noise_mask, self.trajectory, self.alignment)


def diffedit_latent(trajectory: LatentTrajectory, mask: torch.Tensor,
                    alignment: str = "diffusers") -> TrajectoryLatent:
    """The latent a sampler decodes DiffEdit's edit from: the trajectory's noisiest latent,
    ``mask`` (1 = edit) as its noise mask. Checks the mask against the latent now."""
    from nodes.diffusion.masking import as_mask4d, mask_to_latent, match_batch

    samples = trajectory.latents[-1]
    mask = as_mask4d(mask).to(samples.device)
    match_batch(mask_to_latent(mask, tuple(samples.shape[-2:])), samples.shape[0], "mask",
                "trajectory")
    if len(trajectory) < 2:
        raise ValueError("the trajectory holds no inverted step")
    return TrajectoryLatent(samples, noise_mask=mask, trajectory=trajectory,
                            alignment=alignment)
