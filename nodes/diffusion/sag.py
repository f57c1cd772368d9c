"""Self-Attention Guidance (SAG, Hong et al. 2022) as a sampler extension.

At each step the mid block's self-attention map of the unconditional pass (the
conditional one without CFG) marks the image tokens that many queries attend to:
the column sums of the head-averaged map above 1. There the predicted clean latent
x̂0 is blurred (Gaussian, 9x9, ``blur_sigma``), noised back to the step's level with
the predicted noise, and denoised once more with the same prompt. The step's
prediction moves away from that degraded one:
ε̃ = ε_cfg + s (ε(x_t) − ε(x̂_t)), s = ``scale`` (equation 16 of the paper).

The math follows diffusers' ``StableDiffusionSAGPipeline`` step for step, so
results match it. The pipeline only takes schedulers with integer timesteps; σ-space
schedulers (Euler, Heun, LMS, ...) work here too: the latent is read in the
variance-preserving space the UNet sees, where ᾱ_t = 1 / (1 + σ²).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodes.diffusion.attention import AttentionLayer, AttentionRecorder
from nodes.diffusion.extensions import Predictions, SamplerExtension, Step, UNetCall

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.sampling import SamplingRun

#: the layer the pipeline stores (``mid_block.attentions[0].transformer_blocks[0].attn1``)
MID_SELF_ATTENTION = "mid_block.attentions.0.transformer_blocks.0.attn1.processor"
#: the pipeline's (and ComfyUI's) blur kernel; smaller only for latents under 5 pixels
KERNEL_SIZE = 9
#: a token is masked when the queries' attention to it sums above this (1 = average)
THRESHOLD = 1.0
#: the batch role of SAG's own UNet pass (hooks that act on roles can tell it apart)
ROLE = "sag"


@dataclass(eq=False)
class MidSelfAttentionRecorder(AttentionRecorder):
    """Records the self-attention map of the mid block's first transformer block only
    (SDXL-like mid blocks have several; the pipeline reads the first)."""

    def selects(self, layer: AttentionLayer) -> bool:
        return layer.name == MID_SELF_ATTENTION


@dataclass
class _SagState:
    #: the main pass's UNet input and text embedding of the guided role (this step)
    latents: torch.Tensor | None = None
    embeds: torch.Tensor | None = None


class SelfAttentionGuidance(SamplerExtension):
    """SAG: guide away from a prediction blurred where self-attention concentrates."""

    priority = 300
    # The pipeline has a no-CFG branch: there the conditional pass plays the
    # unconditional one's part (the sampler calls guidance with uncond = cond).
    without_cfg = True

    def __init__(self, scale: float = 0.75, blur_sigma: float = 1.0):
        if not blur_sigma > 0:
            raise ValueError("SAG's blur_sigma must be above 0")
        self.scale = float(scale)
        self.blur_sigma = float(blur_sigma)
        # roles: the main pass only, never SAG's own degraded pass
        self.recorder = MidSelfAttentionRecorder(places=("mid",), cross=False,
                                                 roles=("uncond", "cond"))

    def setup(self, run: SamplingRun) -> None:
        if self.scale and MID_SELF_ATTENTION not in run.model.unet.attn_processors:
            raise ValueError("Self-Attention Guidance needs a UNet whose mid block has a "
                             "transformer (self-attention); this model has none")
        run.state[self] = _SagState()

    def attention_hooks(self, run: SamplingRun) -> tuple[AttentionRecorder, ...]:
        return (self.recorder,) if self.scale else ()

    def unet_inputs(self, run: SamplingRun, step: Step, call: UNetCall) -> None:
        if not self.scale:
            return
        # The guided role's rows come first in the batch ([uncond, cond, ...] or
        # [cond, ...]). latent_input is the latent as the UNet sees it: the scheduler's
        # latent for variance-preserving schedulers, latent / sqrt(σ² + 1) for σ ones.
        state: _SagState = run.state[self]
        batch = run.init_latents.shape[0]
        state.latents = call.latent_input[:batch]
        state.embeds = call.encoder_hidden_states[:batch]

    def guidance(self, run: SamplingRun, step: Step, preds: Predictions,
                 guidance: torch.Tensor) -> torch.Tensor:
        if not self.scale:
            return guidance
        state: _SagState = run.state[self]
        role = "uncond" if run.do_cfg else "cond"
        # the main pass's own row, as the degraded pass sees the whole canvas too
        eps = preds.whole_uncond if run.do_cfg else preds.whole_cond
        maps = self.recorder.maps(run, role)
        if not maps:
            raise RuntimeError("SAG recorded no mid-block self-attention this step")
        (_, attn_map, _), = maps
        degraded = self.degraded_latents(run, step.timestep, state.latents, eps, attn_map)
        degraded_pred = self.degraded_prediction(run, step, degraded, state.embeds)
        return guidance + self.scale * (eps - degraded_pred)

    def degraded_latents(self, run: SamplingRun, t: torch.Tensor, latents: torch.Tensor,
                         model_output: torch.Tensor, attn_map: torch.Tensor) -> torch.Tensor:
        """x̂0 blurred where the attention mask is set, noised back to ``t`` (the
        pipeline's ``pred_x0``, ``pred_epsilon`` and ``sag_masking``)."""
        import torch.nn.functional as F

        from nodes.diffusion.sampling import model_input_scale

        scheduler = run.scheduler
        input_scale = model_input_scale(scheduler, t)
        sigma_space = bool(input_scale != 1)
        continuous = callable(getattr(scheduler, "sigma_at", None))  # EDM, CosXL, Playground
        if continuous:
            a, b = scheduler.x0_coefficients(scheduler.sigma_at(t))
            pred_x0 = a * latents + b * model_output
        else:
            if sigma_space:
                alpha_prod_t = input_scale.to(latents.device) ** 2  # ᾱ = 1 / (1 + σ²)
            else:
                alpha_prod_t = scheduler.alphas_cumprod[int(t)].to(latents.device)
            pred_x0, pred_eps = predict_x0_and_eps(
                latents, model_output, alpha_prod_t, scheduler.config.prediction_type)

        # Attention mask: tokens whose column sum of the head-averaged map exceeds 1.
        b, channels, latent_h, latent_w = pred_x0.shape
        size = run.attention.sizes.get(attn_map.shape[1])
        if size is None:
            raise RuntimeError(f"SAG: no spatial size known for {attn_map.shape[1]} tokens")
        attn_mask = attn_map.sum(1, keepdim=False) > THRESHOLD
        attn_mask = (attn_mask.reshape(b, *size).unsqueeze(1).repeat(1, channels, 1, 1)
                     .type(attn_map.dtype))
        attn_mask = F.interpolate(attn_mask, (latent_h, latent_w))

        # reflect padding needs pad < size: tiny latents get a smaller kernel
        kernel_size = min(KERNEL_SIZE, 2 * min(latent_h, latent_w) - 1)
        blurred = gaussian_blur_2d(pred_x0, kernel_size, self.blur_sigma)
        degraded = blurred * attn_mask + pred_x0 * (1 - attn_mask)

        # Noise it again to the step's level (in the space the UNet sees).
        if continuous:  # c_in·(degraded + σ·ε̂), ε̂ the input's own noise
            return latents + float(input_scale) * (degraded - pred_x0)
        if sigma_space:
            return alpha_prod_t ** 0.5 * degraded + (1 - alpha_prod_t) ** 0.5 * pred_eps
        return scheduler.add_noise(degraded, noise=pred_eps, timesteps=t[None])

    def degraded_prediction(self, run: SamplingRun, step: Step, sample: torch.Tensor,
                            embeds: torch.Tensor) -> torch.Tensor:
        """One extra UNet pass on the degraded latent with the guided role's prompt.

        Other extensions' ``unet_inputs`` fill it as for the main pass (a ControlNet's
        residuals, an inpainting UNet's extra channels); its batch is that role's rows,
        declared as the one role ``"sag"`` to the attention store, standing for that
        role's conditioning (whose hooks then act on it, as in ComfyUI's SAG pass).
        """
        guided = run.entries.get("uncond" if run.do_cfg else "cond")
        if guided is not None:
            run.entries[ROLE] = guided
        return run.extension_pass(self, step, sample, embeds, (ROLE,))

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)
        run.state.pop(self.recorder, None)


def predict_x0_and_eps(sample: torch.Tensor, model_output: torch.Tensor,
                       alpha_prod_t: torch.Tensor, prediction_type: str
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) from a UNet output of ``prediction_type`` at ᾱ_t (the pipeline's math)."""
    beta_prod_t = 1 - alpha_prod_t
    if prediction_type == "epsilon":
        return (sample - beta_prod_t ** 0.5 * model_output) / alpha_prod_t ** 0.5, model_output
    if prediction_type == "sample":
        return model_output, (sample - alpha_prod_t ** 0.5 * model_output) / beta_prod_t ** 0.5
    if prediction_type == "v_prediction":
        return (alpha_prod_t ** 0.5 * sample - beta_prod_t ** 0.5 * model_output,
                beta_prod_t ** 0.5 * sample + alpha_prod_t ** 0.5 * model_output)
    raise ValueError(f"SAG: unknown prediction_type {prediction_type!r}")


def gaussian_blur_2d(img: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur per channel with reflect padding (the pipeline's)."""
    import torch
    import torch.nn.functional as F

    ksize_half = (kernel_size - 1) * 0.5
    x = torch.linspace(-ksize_half, ksize_half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    x_kernel = (pdf / pdf.sum()).to(device=img.device, dtype=img.dtype)
    kernel2d = torch.mm(x_kernel[:, None], x_kernel[None, :])
    kernel2d = kernel2d.expand(img.shape[-3], 1, kernel2d.shape[0], kernel2d.shape[1])
    pad = kernel_size // 2
    img = F.pad(img, [pad, pad, pad, pad], mode="reflect")
    return F.conv2d(img, kernel2d, groups=img.shape[-3])

