"""CLIP guidance as a sampler extension: steer each chosen step by the gradient of a CLIP
loss with respect to the latent, taken through the predicted clean latent and the VAE.

At a guided step, with the step's final noise prediction ε̂ (after CFG and every other
guidance change) and the latent x_t as the UNet sees it (variance-preserving: x_t =
√ᾱ x0 + √(1−ᾱ) ε; σ-space schedulers give it as x / √(σ²+1), so ᾱ = 1 / (1 + σ²)):

1. x̂0 = (x_t − √(1−ᾱ) ε̂) / √ᾱ (v-prediction: x̂0 = √ᾱ x_t − √(1−ᾱ) v̂). Its value is
   the final prediction's; its derivative goes through one more UNet pass on x_t with
   the conditional prompt (``through_unet``, as diffusers' community
   ``CLIPGuidedStableDiffusion``), or, without it, holds ε̂ fixed (∂x̂0/∂x_t = 1/√ᾱ:
   cheaper, but it overweights the noisiest steps, where the UNet's own dependence on
   x_t cancels most of that).
2. image = clamp(VAE.decode(x̂0 / scaling_factor) / 2 + 0.5, 0, 1); optionally
   ``num_cutouts`` random square crops of it (seeded), each resized to CLIP's input.
3. loss = scale · Σ_images mean_{cutouts, targets} d(ê_image, ê_target)², the spherical
   distance of the normalised embeddings: d² = 2 arcsin(‖a − b‖ / 2)².
4. g = −∂loss/∂x_t and ε̃ = ε̂ − √(1−ᾱ) g (for v: ṽ = v̂ − √(1−ᾱ)/√ᾱ · g): adding g to
   the score, as classifier guidance does. For σ-space schedulers this is ε̃ = ε̂ − σ ∇_x
   in the scheduler's own space, i.e. the denoised estimate moves by σ² ∇ (k-diffusion's
   conditioning); the community pipeline instead moves the LMS latent itself by σ² ∇
   and keeps ε̂, and for PNDM decodes a blend of x̂0 and x_t rather than x̂0.

Only the latent gets a gradient (``torch.autograd.grad`` on it alone): no weight of the
UNet, VAE or CLIP gets ``.grad``, and no graph outlives the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodes.diffusion.extensions import Predictions, SamplerExtension, Step, UNetCall
from nodes.diffusion.schedulers import SAMPLERS, SIGMA_TWINS

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.clip_vision import ClipVision
    from nodes.diffusion.handles import Vae
    from nodes.diffusion.sampling import SamplingRun

#: the batch role of the UNet pass with gradients (``through_unet``)
ROLE = "clip_guidance"
#: the model output types whose x̂0 depends on the latent (not ``sample``)
SUPPORTED_PREDICTIONS = ("epsilon", "v_prediction")
#: the sampler names it works with: all of the sampler's, whose schedulers are either
#: variance-preserving (``alphas_cumprod``) or σ-space (UNet input scaled by 1/√(σ²+1))
SUPPORTED_SCHEDULERS = tuple(SAMPLERS)
#: the scheduler classes behind them (diffusers' class names and ours): each sampler's
#: own, and the σ-space twins that run its σ lists and the spacings its diffusers class
#: lacks (euler_ancestral + karras, ddim + beta, dpmpp_2m + kl_optimal, ...), which are
#: Euler's scheduler (x = x0 + σ·ε, UNet input x / √(σ²+1)) with another update rule
SUPPORTED_CLASSES = frozenset({class_name for class_name, _ in SAMPLERS.values()}
                              | set(SIGMA_TWINS.values()))


def spherical_dist_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between normalised vectors (last axis), × 2."""
    import torch.nn.functional as F

    x = F.normalize(x, dim=-1)
    y = F.normalize(y, dim=-1)
    return (x - y).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


def cutout_boxes(height: int, width: int, count: int, cut_size: int,
                 generator: torch.Generator) -> list[tuple[int, int, int]]:
    """``count`` random squares ``(top, left, size)`` inside an image.

    Sides are uniform between min(cut_size, short side / 2) and the short side (the
    community pipeline's ``MakeCutouts`` with cut_power 1, except that the smallest side
    is at most half the image, so small images still get real crops); positions are
    uniform. One generator draws size, left, top per cutout, in that order.
    """
    import torch

    side = min(height, width)
    smallest = max(1, min(cut_size, side // 2))
    boxes = []
    for _ in range(count):
        size = int(torch.rand([], generator=generator) * (side - smallest) + smallest)
        left = int(torch.randint(0, width - size + 1, (), generator=generator))
        top = int(torch.randint(0, height - size + 1, (), generator=generator))
        boxes.append((top, left, size))
    return boxes


def clip_image_features(clip: ClipVision, pixels: torch.Tensor) -> torch.Tensor:
    """Projected image embeddings of CLIP-normalised pixels ``[B, 3, S, S]``."""
    model = clip.model
    if hasattr(model, "get_image_features"):
        out = model.get_image_features(pixel_values=pixels)
    else:
        out = model(pixel_values=pixels).image_embeds
    return getattr(out, "pooler_output", out)


def guided_embeds(clip: ClipVision, images: torch.Tensor, num_cutouts: int,
                  generator: torch.Generator | None, crop: str = "center") -> torch.Tensor:
    """Image embeddings ``[cutouts or 1, B, D]`` of IMAGE ``images`` ``[B, H, W, 3]``:
    the whole image (``crop`` as CLIP Vision Encode), or ``num_cutouts`` seeded crops."""
    import torch

    if num_cutouts <= 0:
        return clip_image_features(clip, clip.preprocess(images, crop))[None]
    height, width = images.shape[1:3]
    boxes = cutout_boxes(height, width, num_cutouts, clip.image_size, generator)
    pixels = torch.cat([clip.preprocess(images[:, top:top + size, left:left + size], "center")
                        for top, left, size in boxes])
    return clip_image_features(clip, pixels).reshape(num_cutouts, images.shape[0], -1)


@dataclass
class _State:
    #: this step's latent as the UNet sees it (the main pass's first chunk)
    latents: torch.Tensor | None = None
    #: the conditional prompt's rows of the main pass (for the pass with gradients)
    embeds: torch.Tensor | None = None


class ClipGuidance(SamplerExtension):
    """CLIP guidance: add the gradient of a CLIP loss to the noise prediction."""

    # After every other guidance change (SEGA 200, SAG 300, ...): the gradient is taken
    # for the step's final prediction.
    priority = 900
    without_cfg = True  # cfg 1 too: guidance then gets the conditional prediction alone

    def __init__(self, clip: ClipVision, vae: Vae, target: torch.Tensor, scale: float,
                 every_n_steps: int = 1, start_percent: float = 0.0,
                 end_percent: float = 1.0, num_cutouts: int = 0, cutout_seed: int = 0,
                 crop: str = "center", through_unet: bool = True):
        if every_n_steps < 1:
            raise ValueError("CLIP guidance: every_n_steps must be at least 1")
        if not 0.0 <= start_percent <= end_percent <= 1.0:
            raise ValueError("CLIP guidance: need 0 <= start_percent <= end_percent <= 1")
        self.clip = clip
        self.vae = vae
        #: target embeddings ``[T, D]`` (text prompts or images), not normalised
        self.target = target.detach()
        self.scale = float(scale)
        self.every_n_steps = int(every_n_steps)
        self.start_percent = float(start_percent)
        self.end_percent = float(end_percent)
        self.num_cutouts = int(num_cutouts)
        self.cutout_seed = int(cutout_seed)
        self.crop = crop
        self.through_unet = bool(through_unet)

    def guided(self, run: SamplingRun, step: Step) -> bool:
        """Steps 0, n, 2n, ... of the schedule whose position index/total lies in
        [start, end)."""
        i = run.schedule_index(step)
        if not self.scale or i % self.every_n_steps:
            return False
        position = i / max(run.schedule_length, 1)
        return self.start_percent <= position < self.end_percent

    def setup(self, run: SamplingRun) -> None:
        if self.scale:
            check_supported(run.scheduler)
        self.vae = self.vae.scaled_for(run.model.latent_scale)  # a bare VAE file's: the model's
        run.state[self] = _State()

    def unet_inputs(self, run: SamplingRun, step: Step, call: UNetCall) -> None:
        # Only the main pass: an extension's own pass (SAG's degraded latent) declares
        # other roles to the attention store and must not replace the step's latent.
        if not self.scale or run.attention.roles != run.roles:
            return
        state: _State = run.state[self]
        rows = call.latent_input.shape[0] // len(run.roles)
        state.latents = call.latent_input[:rows]
        first = run.roles.index("cond") * rows
        state.embeds = call.encoder_hidden_states[first:first + rows]

    def guidance(self, run: SamplingRun, step: Step, preds: Predictions,
                 guidance: torch.Tensor) -> torch.Tensor:
        if not self.guided(run, step):
            return guidance
        import torch

        state: _State = run.state[self]
        prediction = (preds.uncond if run.do_cfg else preds.cond) + guidance
        alpha_prod_t = alpha_prod(run.scheduler, step.timestep).to(state.latents.device)
        generator = torch.Generator("cpu").manual_seed(self.cutout_seed + run.schedule_index(step))
        unet = None
        if self.through_unet:
            def unet(x: torch.Tensor) -> torch.Tensor:
                return run.extension_pass(self, step, x, state.embeds, (ROLE,))
        grad = self.latent_gradient(state.latents, prediction, alpha_prod_t,
                                    run.scheduler.config.prediction_type, generator, unet)
        shift = (1 - alpha_prod_t) ** 0.5 * grad
        if run.scheduler.config.prediction_type == "v_prediction":
            shift = shift / alpha_prod_t ** 0.5
        return guidance - shift.to(guidance.dtype)

    def latent_gradient(self, latents: torch.Tensor, prediction: torch.Tensor,
                        alpha_prod_t: torch.Tensor, prediction_type: str,
                        generator: torch.Generator, unet: Any = None) -> torch.Tensor:
        """g = −∂loss/∂x_t through x̂0, the VAE and CLIP; with ``unet`` (x → the
        conditional prediction) through that pass as well, else the prediction is held
        fixed. x̂0's value is always the step's final prediction's."""
        import torch

        with torch.enable_grad():
            x = latents.detach().requires_grad_(True)
            out = prediction.detach()
            if unet is not None:
                # the final prediction's value with the conditional pass's derivative
                cond = unet(x)
                out = out + (cond - cond.detach())
            if prediction_type == "v_prediction":
                x0 = alpha_prod_t ** 0.5 * x - (1 - alpha_prod_t) ** 0.5 * out
            else:
                x0 = (x - (1 - alpha_prod_t) ** 0.5 * out) / alpha_prod_t ** 0.5
            loss = self.loss(x0, generator)
            (grad,) = torch.autograd.grad(loss, x)
        return -grad.detach()

    def loss(self, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """scale × Σ_images mean_{cutouts, targets} spherical distance (a scalar)."""
        model = self.vae.vae
        z = x0.to(device=model.device, dtype=model.dtype) / self.vae.scaling_factor
        image = (model.decode(z, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)
        embeds = guided_embeds(self.clip, image.permute(0, 2, 3, 1), self.num_cutouts,
                               generator, self.crop)
        target = self.target.to(device=embeds.device, dtype=embeds.dtype)
        dists = spherical_dist_loss(embeds[:, :, None], target[None, None])  # [n, B, T]
        return dists.mean(dim=(0, 2)).sum() * self.scale

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)


def check_supported(scheduler: Any) -> None:
    """A ValueError saying what to do, for a model or scheduler whose x̂0 this guidance
    cannot form (every sampler and schedule of a discrete model can)."""
    if hasattr(type(scheduler), "spec"):  # nodes.diffusion.continuous_samplers
        # its x0 is c_skip·x + c_out·F with σ_data's preconditioning, not x − σ·ε
        raise ValueError(
            "CLIP guidance needs a discrete noise schedule (ᾱ per training timestep), and "
            "this model samples continuous noise levels (Model Sampling Continuous EDM / V, "
            "CosXL, Playground v2.5): use it with a discrete model")
    check_prediction_type(scheduler.config.get("prediction_type", "epsilon"))
    if type(scheduler).__name__ not in SUPPORTED_CLASSES:
        raise ValueError(
            f"CLIP guidance cannot run the {type(scheduler).__name__} scheduler (its x0 is "
            f"not formed from a variance-preserving or σ-space latent): sample with one of "
            f"KSampler's samplers (e.g. {', '.join(SUPPORTED_SCHEDULERS[:3])} or ddim), on "
            f"any schedule")


def check_prediction_type(prediction_type: str) -> None:
    """A ValueError unless the model's output gives an x̂0 that depends on the latent."""
    if prediction_type not in SUPPORTED_PREDICTIONS:
        raise ValueError(
            f"CLIP guidance needs a model that predicts {' or '.join(SUPPORTED_PREDICTIONS)}; "
            f"this one predicts {prediction_type!r} (its x0 does not depend on the latent)")


def alpha_prod(scheduler: Any, timestep: torch.Tensor) -> torch.Tensor:
    """ᾱ_t of the latent the UNet sees: ``alphas_cumprod[t]`` for variance-preserving
    schedulers, 1 / (1 + σ²) (the UNet input scale squared) for σ-space ones."""
    from nodes.diffusion.sampling import model_input_scale

    scale = model_input_scale(scheduler, timestep)
    if bool(scale != 1):
        return scale ** 2
    return scheduler.alphas_cumprod[int(timestep)]


def target_embeds(clip: ClipVision, text: str = "", image: torch.Tensor | None = None,
                  crop: str = "center") -> torch.Tensor:
    """Target embeddings ``[T, D]``: the text's (text tower) or each image's (image tower)."""
    import torch

    with torch.no_grad():
        if image is not None:
            return clip.image_embeds(image, crop).float()
        if not clip.has_text:
            raise ValueError(
                f"{clip.name or 'this CLIP vision model'} has only an image tower, so it "
                "cannot encode the text target: load a whole CLIP (both towers, e.g. "
                "steerflow-shapes-clip.safetensors) with Load CLIP Vision, or give an image "
                "target")
        return clip.text_embeds([text]).float()
