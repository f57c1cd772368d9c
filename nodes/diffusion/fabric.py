"""FABRIC (von Rütte et al. 2023): steer sampling with liked and disliked images by
attention injection, as a sampler extension on the one attention store.

Each step the feedback images (VAE latents) are noised to the step's level and passed
through the UNet once with the empty prompt, in a pass of their own (batch role
``"fabric"``); every self-attention layer of a transformer block (``attn1``) keeps the
keys and values of those images. In the step's main pass the same layers then attend
to the feedback tokens as well as to the image's own: the conditional prediction to the
liked images', the unconditional one to the disliked images'. The feedback tokens'
attention probabilities are multiplied by a weight and each row renormalised:

    p_ij ∝ softmax(q_i K_allᵀ / √d)_j · w_j,  w = 1 on own tokens, w_fb on feedback tokens

w_fb is ``max_weight`` for steps in the feedback window (step indices
``round(n · feedback_start_ratio)`` to ``round(n · feedback_end_ratio)``, both included)
and ``min_weight`` outside it; disliked images get it times ``neg_scale``. Over the UNet
the weight goes linearly from w (outer down block) to w · ``*_bottleneck_scale`` (mid
block) and back (up blocks). The math follows diffusers' community ``FabricPipeline``:
same window, weights and renormalisation, same cond/uncond assignment.

Where it departs, on purpose: the feedback latents are the VAE posterior's mode
(``VAEEncode``'s rule, deterministic) rather than a sample; the feedback noise comes
from a generator of its own seeded from the run's seed (fresh noise every step, as the
pipeline draws it) rather than torch's global one, so runs repeat and the sampler's
noise is untouched; and it is added in the variance-preserving space the UNet sees,
x = √ᾱ z + √(1−ᾱ) ε with ᾱ = 1/(1+σ²) for σ-space schedulers (the pipeline's
Euler-ancestral branch, for every such scheduler). Feedback images of another size
than the generation are resized to it (bilinear, antialiased; the pipeline resizes
with PIL). Without CFG there is no unconditional prediction: disliked images are then
an error. Extra batch entries of other extensions (SEGA concepts, PAG's perturbed copy,
combined prompts) are conditional predictions and see the liked images too; extra
passes of other extensions (SAG's) see no feedback, and the feedback pass gets no other
extension's UNet inputs (a ControlNet's hint describes the image being made, not the
feedback images; LoRA acts on both, being on the UNet's weights). The feedback pass
needs a UNet that takes the latent alone (not a 9-channel inpainting one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nodes.diffusion.attention import AttentionCall, AttentionHook, AttentionLayer
from nodes.diffusion.extensions import SamplerExtension, Step, UNetCall

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.handles import Vae
    from nodes.diffusion.sampling import SamplingRun

#: the batch role of the feedback images' own UNet pass
ROLE = "fabric"
#: added to the run's seed for the feedback noise, so it is not the initial latent's noise
NOISE_SEED_OFFSET = 0x0FAB_81C
#: roles whose rows attend to the liked images; "uncond" attends to the disliked ones,
#: every other role (an extension's own pass) to none
LIKED_ROLES = ("cond",)


def feedback_window(total: int, start_ratio: float, end_ratio: float) -> tuple[int, int]:
    """First and last step index (both included) that use ``max_weight`` (the pipeline's
    ``ref_start_idx``/``ref_end_idx``; Python's round, halves to even)."""
    return round(total * start_ratio), round(total * end_ratio)


def block_weights(weight: float, bottleneck: float, down_blocks: int
                  ) -> tuple[list[float], float, list[float]]:
    """Weights of the down blocks, the mid block and the up blocks: linear from ``weight``
    towards ``weight · bottleneck`` at the mid block (the pipeline's ``linspace``, in
    float32 as there)."""
    import torch

    local = torch.linspace(weight, weight * bottleneck, steps=down_blocks + 1)[:-1].tolist()
    return local, weight * bottleneck, local[::-1]


def _block_index(name: str) -> tuple[str, int]:
    """("down" | "mid" | "up", block index) of an attention processor name."""
    parts = name.split(".")
    if parts[0] == "mid_block":
        return "mid", 0
    return parts[0].split("_", 1)[0], int(parts[1])


@dataclass
class _RunState:
    latents: torch.Tensor  # [liked + disliked, C, h, w], liked first
    null_embeds: torch.Tensor  # [liked + disliked, tokens, dim]
    generator: torch.Generator
    window: tuple[int, int]
    #: this step's feedback keys and values by layer: [images × heads, tokens, head_dim]
    kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    #: this step's weight factor (0: no feedback this step)
    factor: float = 0.0
    #: per-row weights of the keys appended in this layer call, for on_probs
    pending: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(eq=False)  # hashed by identity, like the extension that owns it
class FeedbackAttention(AttentionHook):
    """Keeps the feedback pass's self-attention keys/values and appends them, weighted,
    to the main pass's (every transformer block's ``attn1`` whose keys are the image)."""

    owner: FABRIC

    def selects(self, layer: AttentionLayer) -> bool:
        # self-attention only: an ``only_cross_attention`` block's attn1 reads the text
        # (the SD x4 upscaler's), and feedback images have no place among its keys
        return (not layer.text and ".transformer_blocks." in layer.name
                and layer.name.endswith("attn1.processor"))

    def on_kv(self, call: AttentionCall, key: torch.Tensor, value: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        state: _RunState | None = call.run.state.get(self.owner)
        if state is None:
            return key, value
        name = call.layer.name
        if call.roles == (ROLE,):  # the feedback pass: keep its keys and values
            state.kv[name] = (key.detach(), value.detach())
            return key, value
        if name not in state.kv or not state.factor:
            return key, value
        weights = self.owner.row_weights(call, state)
        if weights is None:
            return key, value
        fb_key, fb_value = state.kv[name]
        heads = call.heads

        def per_head(t: torch.Tensor) -> torch.Tensor:
            # [images × heads, T, d] → [heads, images · T, d]: every feedback image's
            # tokens after each other, as the pipeline's view(1, -1, dim) of its states
            n, tokens, dim = t.shape[0] // heads, t.shape[1], t.shape[2]
            return t.reshape(n, heads, tokens, dim).transpose(0, 1).reshape(heads, -1, dim)

        copies = key.shape[0] // heads
        key = torch.cat([key, per_head(fb_key).repeat(copies, 1, 1)], dim=1)
        value = torch.cat([value, per_head(fb_value).repeat(copies, 1, 1)], dim=1)
        state.pending[name] = weights
        return key, value

    def on_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        state: _RunState | None = call.run.state.get(self.owner)
        weights = None if state is None else state.pending.pop(call.layer.name, None)
        if weights is None:
            return probs
        import torch

        own = probs.shape[-1] - weights.shape[-1]
        full = torch.cat([weights.new_ones(weights.shape[0], own), weights], dim=1)
        probs = probs * full[:, None, :].to(probs.dtype)
        return probs / probs.sum(dim=-1, keepdim=True)


class FABRIC(SamplerExtension):
    """FABRIC: liked/disliked images steer every step through self-attention."""

    priority = 120  # its feedback pass runs in pre_step, before the step's main pass

    def __init__(self, vae: Vae, null_embeds: torch.Tensor, liked: torch.Tensor | None,
                 disliked: torch.Tensor | None, *, min_weight: float = 0.05,
                 max_weight: float = 0.8, neg_scale: float = 0.5,
                 feedback_start_ratio: float = 0.33, feedback_end_ratio: float = 0.66,
                 pos_bottleneck_scale: float = 1.0, neg_bottleneck_scale: float = 1.0):
        self.vae = vae
        self.null_embeds = null_embeds  # the empty prompt [1, tokens, dim]
        self.liked = check_images(liked, "liked")
        self.disliked = check_images(disliked, "disliked")
        if not len(self.liked) and not len(self.disliked):
            raise ValueError("FABRIC needs at least one liked or disliked image: both "
                             "batches are empty")
        problem = check_weights(min_weight, max_weight, feedback_start_ratio,
                                feedback_end_ratio)
        if problem:
            raise ValueError(problem[1])
        self.min_weight, self.max_weight = float(min_weight), float(max_weight)
        self.neg_scale = float(neg_scale)
        self.feedback_start_ratio = float(feedback_start_ratio)
        self.feedback_end_ratio = float(feedback_end_ratio)
        self.pos_bottleneck_scale = float(pos_bottleneck_scale)
        self.neg_bottleneck_scale = float(neg_bottleneck_scale)
        self._hook = FeedbackAttention(self)

    # -- per run ---------------------------------------------------------------------------

    def setup(self, run: SamplingRun) -> None:
        import torch

        if len(self.disliked) and not run.do_cfg:
            raise ValueError("FABRIC's disliked images act on the unconditional prediction, "
                             "which a run without CFG (cfg <= 1) does not make: raise cfg "
                             "above 1 or leave the disliked images out")
        unet = run.model.unet
        channels = run.init_latents.shape[1]
        if unet.config.in_channels != channels:
            raise ValueError(
                f"FABRIC needs a UNet that denoises the latent alone ({channels} channels); "
                f"this one takes {unet.config.in_channels} (an inpainting or instruct "
                "model): use a text-to-image model")
        if channels != self.vae.latent_channels:
            raise ValueError(
                f"FABRIC's VAE makes {self.vae.latent_channels}-channel latents but the model "
                f"denoises {channels}: connect the checkpoint's own VAE")
        h, w = run.init_latents.shape[-2:]
        latents = torch.cat([
            feedback_latents(self.vae, images, h * self.vae.downscale, w * self.vae.downscale)
            for images in (self.liked, self.disliked) if len(images)])
        if latents.shape[-2:] != (h, w):
            raise ValueError(f"FABRIC's VAE encodes {h * self.vae.downscale}x"
                             f"{w * self.vae.downscale} pixels to {tuple(latents.shape[-2:])} "
                             f"latents, not the run's {(h, w)}: connect the model's own VAE")
        generator = torch.Generator("cpu").manual_seed(
            (run.params.seed + NOISE_SEED_OFFSET) % 2**63)
        window = feedback_window(run.schedule_length, self.feedback_start_ratio,
                                 self.feedback_end_ratio)
        for j in range(run.schedule_before):
            # a later window of a split run (KSamplerAdvanced, SplitSigmas): skip the noise
            # the earlier steps drew, so the two samplers draw what the one run does
            if self.weight_factor(j, window) > 0:
                torch.randn(tuple(latents.shape), generator=generator)
        null = self.null_embeds.to(device=run.device, dtype=run.dtype)
        run.state[self] = _RunState(
            latents.to(device=run.device, dtype=run.dtype),
            null.repeat(latents.shape[0], 1, 1), generator, window)

    def attention_hooks(self, run: SamplingRun) -> tuple[AttentionHook, ...]:
        # weights of 0 throughout: the layers keep their own processors (exactly no FABRIC)
        return (self._hook,) if self.max_weight > 0 else ()

    def weight_factor(self, index: int, window: tuple[int, int]) -> float:
        start, end = window
        return self.max_weight if start <= index <= end else self.min_weight

    def pre_step(self, run: SamplingRun, step: Step, latents: torch.Tensor) -> torch.Tensor:
        state: _RunState = run.state[self]
        state.kv.clear()
        state.factor = self.weight_factor(run.schedule_index(step), state.window)
        if state.factor > 0:
            self.feedback_pass(run, step, state)
        return latents

    def feedback_pass(self, run: SamplingRun, step: Step, state: _RunState) -> None:
        """Noise the feedback latents to the step's level and run them through the UNet
        with the empty prompt; the hook keeps every self-attention layer's keys/values."""
        import torch

        from nodes.diffusion.sampling import model_input_scale

        t = step.timestep
        z = state.latents
        noise = torch.randn(tuple(z.shape), generator=state.generator).to(z.device, z.dtype)
        scale = model_input_scale(run.scheduler, t)
        if bool(scale != 1):  # σ-space: ᾱ = 1 / (1 + σ²), in the space the UNet sees
            alpha_prod = (scale ** 2).to(z.device, z.dtype)
        else:
            alpha_prod = run.scheduler.alphas_cumprod[int(t)].to(z.device, z.dtype)
        noised = alpha_prod ** 0.5 * z + (1 - alpha_prod) ** 0.5 * noise
        call = UNetCall(noised, noised, t, state.null_embeds,
                        added_cond_kwargs=run.added_cond_kwargs(state.null_embeds, (ROLE,)),
                        timestep_cond=run.timestep_cond)
        with run.attention.roles_for((ROLE,)):
            call.forward(run.model.unet)

    def row_weights(self, call: AttentionCall, state: _RunState) -> torch.Tensor | None:
        """``[rows, feedback tokens]`` weights of this call's rows (None: no row attends to
        any feedback image): liked for the conditional roles, disliked for "uncond"."""
        import torch

        n_liked, n_disliked = len(self.liked), len(self.disliked)
        tokens = state.kv[call.layer.name][0].shape[1]
        place, index = _block_index(call.layer.name)
        down = len(call.run.model.unet.config.down_block_types)
        pos = block_weights(state.factor, self.pos_bottleneck_scale, down)
        neg = block_weights(state.factor * self.neg_scale, self.neg_bottleneck_scale, down)
        pick = {"down": lambda w: w[0][index], "mid": lambda w: w[1],
                "up": lambda w: w[2][index]}[place]
        liked_w, disliked_w = pick(pos), pick(neg)
        weights = torch.zeros(call.batch, (n_liked + n_disliked) * tokens)
        acting = False
        for role in call.roles:
            rows = call.rows(role)
            if n_liked and (role in LIKED_ROLES or role.startswith("extra:")):
                weights[rows, :n_liked * tokens] = liked_w
                acting = True
            elif n_disliked and role == "uncond":
                weights[rows, n_liked * tokens:] = disliked_w
                acting = True
        if not acting:
            return None
        return weights.to(call.run.device)

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)


# -- inputs ---------------------------------------------------------------------------------

def check_images(images: Any, name: str) -> torch.Tensor:
    """An IMAGE batch ``[B, H, W, 3]`` (None: an empty batch), or a ValueError saying what
    is wrong with it."""
    import torch

    if images is None:
        return torch.zeros(0, 1, 1, 3)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"FABRIC's {name} images must be an IMAGE batch [B, H, W, 3]; "
                         f"got {shape}")
    if images.shape[-1] != 3:
        raise ValueError(f"FABRIC's {name} images have {images.shape[-1]} channels; they "
                         "must be RGB (3): convert them first (an RGBA image's alpha is "
                         "a MASK in LoadImage's second output)")
    if not torch.isfinite(images).all():
        raise ValueError(f"FABRIC's {name} images hold NaN or infinite values")
    return images.detach().float().cpu().clamp(0, 1)


def check_weights(min_weight: float, max_weight: float, start_ratio: float,
                  end_ratio: float) -> tuple[str, str] | None:
    """(input name, message) when the weights or the window are inconsistent, else None."""
    if min_weight > max_weight:
        return ("min_weight", f"min_weight ({min_weight}) is the weight outside the feedback "
                f"window and must not exceed max_weight ({max_weight})")
    if start_ratio > end_ratio:
        return ("feedback_start_ratio", f"feedback_start_ratio ({start_ratio}) must not "
                f"exceed feedback_end_ratio ({end_ratio})")
    return None


def feedback_latents(vae: Vae, images: torch.Tensor, height: int, width: int
                     ) -> torch.Tensor:
    """IMAGE ``[B, H, W, 3]`` resized to ``height`` x ``width`` (bilinear, antialiased)
    when another size, then VAE-encoded (the posterior's mode, UNet space)."""
    import torch.nn.functional as F

    from nodes.latent import encode

    if images.shape[1:3] != (height, width):
        x = images.permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True,
                          align_corners=False)
        images = x.clamp(0, 1).permute(0, 2, 3, 1)
    return encode(vae, images)
