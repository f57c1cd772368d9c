"""DDIM inversion: run the deterministic DDIM update backwards, image → noise.

The loop is the sampler's own (:func:`nodes.diffusion.sampling.sample`) driven by
diffusers' ``DDIMInverseScheduler``: every attached extension (ControlNet, the
inpainting concat, attention processors) applies, and the math is that of
diffusers' ``StableDiffusionDiffEditPipeline.invert``: at each ascending timestep
the UNet predicts the noise of the current latent and the inverse DDIM step moves
it one level up.

Optionally (``num_reg_steps`` > 0) the noise prediction is regularised towards
i.i.d. standard-normal noise before each inverse step, as
``StableDiffusionPix2PixZeroPipeline.invert`` does (and DiffEdit's ``invert``,
which borrowed it): :class:`InversionRegularizer`, gradient steps on the
prediction that shrink its auto-correlation at random shifts and its KL divergence
from N(0, 1). Noise that looks like noise edits better (Pix2Pix-Zero's paper, §3.2).

The inverted latent is in the variance-preserving space the UNet sees
(``x_t = sqrt(ᾱ_t)·x_0 + sqrt(1-ᾱ_t)·ε``), which is what a sampler with its noise
addition disabled (``KSamplerAdvanced``, add_noise off) starts from.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from nodes.diffusion.extensions import Predictions, SamplerExtension, Step, UNetCall
from nodes.diffusion.handles import Conditioning, DiffusionModel, Latent, Tensor

if TYPE_CHECKING:
    import torch
    from diffusers import DDIMInverseScheduler

    from nodes.diffusion.sampling import SamplingRun, StepCallback


@dataclass(frozen=True)
class LatentTrajectory:
    """LATENT_TRAJECTORY: the latents DDIM inversion passed through.

    ``latents`` ``[n + 1, B, C, h, w]`` runs from the clean input (index 0) to the
    most noisy (index n); ``timesteps`` ``[n]`` holds the timestep of latents 1..n.
    ``steps`` is the length of the full schedule the inversion used: the latent at
    index ``i`` is where a sampler with that many steps is at ``start_at_step =
    steps - i``.
    """

    # node inputs' types: pydantic resolves them (see handles.Tensor)
    latents: Tensor
    timesteps: Tensor
    steps: int

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def at_start_step(self, start_at_step: int) -> torch.Tensor:
        """The latent a ``steps``-step sampler starting at ``start_at_step`` begins from."""
        index = self.steps - start_at_step
        if not 0 <= index < len(self):
            first = self.steps - len(self) + 1
            raise ValueError(f"this trajectory covers start_at_step {first}..{self.steps} of a "
                             f"{self.steps}-step schedule, not {start_at_step}")
        return self.latents[index]


def inverse_scheduler(scheduler_config: dict) -> DDIMInverseScheduler:
    """DDIMInverseScheduler from the model's scheduler config (as diffusers' examples do),
    less the options only other schedulers know (which diffusers would warn about)."""
    from diffusers import DDIMInverseScheduler

    known = set(inspect.signature(DDIMInverseScheduler.__init__).parameters)
    return DDIMInverseScheduler.from_config(
        {k: v for k, v in scheduler_config.items() if k in known or k.startswith("_")})


def check_inverse_steps(scheduler: Any, steps: int) -> None:
    """Refuse a step count whose inverse schedule would step past the model's last
    training timestep (DDIMInverseScheduler then indexes ``alphas_cumprod`` out of
    range: with SD's 1000 timesteps and ``steps_offset`` 1, ``steps`` = 1000)."""
    total = int(scheduler.config.num_train_timesteps)
    scheduler.set_timesteps(steps)
    if int(scheduler.timesteps.max()) >= total:
        raise ValueError(f"steps {steps} is too many for DDIM inversion on this model's "
                         f"{total}-timestep schedule: use at most {total - 1} steps")


def ddim_invert(model: DiffusionModel, positive: Conditioning, negative: Conditioning | None,
                latent: Latent, steps: int, cfg: float = 1.0, denoise: float = 1.0,
                callback: StepCallback | None = None,
                regularizer: InversionRegularizer | None = None) -> LatentTrajectory:
    """Invert ``latent`` (clean, UNet space) over the first ``int(steps * denoise)`` steps
    of a ``steps``-step DDIM schedule; returns the whole trajectory. ``regularizer``
    (Pix2Pix-Zero's noise regularisation) acts on every step's noise prediction."""
    import torch

    from nodes.diffusion.sampling import SamplingParams, fit_empty_latent, sample

    if cfg > 1.0 and negative is None:
        raise ValueError("cfg > 1 needs a negative conditioning (or use cfg 1, the usual "
                         "choice for inversion)")
    count = min(int(steps * denoise), steps)
    if count < 1:
        raise ValueError(f"denoise {denoise} inverts no step of {steps}")
    scheduler = inverse_scheduler(model.scheduler_config)
    check_inverse_steps(scheduler, steps)
    # A noise mask would re-noise the input forward in time; inversion has no use for it.
    # An Empty Latent Image made without its vae is remade for the model's VAE, as the
    # sampler does (its trajectory starts from the latent the sampler then sees).
    latent = fit_empty_latent(model, replace(latent, noise_mask=None))
    trajectory = [latent.samples.to(device=model.device, dtype=model.dtype)]

    def keep(step: int, total: int, latents: torch.Tensor) -> None:
        trajectory.append(latents.clone())
        if callback is not None:
            callback(step, total, latents)

    if regularizer is not None and regularizer.num_reg_steps > 0:
        model = model.with_extension(regularizer)
    params = SamplingParams(seed=0, steps=steps, cfg=cfg, add_noise=False, end_step=count)
    sample(model, scheduler, positive, negative if negative is not None else positive, latent,
           params, callback=keep)
    return LatentTrajectory(torch.stack(trajectory), scheduler.timesteps[:count].cpu(), steps)


# --- Pix2Pix-Zero's noise regularisation ----------------------------------------------------

def auto_corr_loss(hidden_states: torch.Tensor, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """Squared auto-correlation of each image's channels at one random shift per scale,
    down to 8 pixels (the pipelines' ``auto_corr_loss``: the same draws in the same order
    from ``generator``)."""
    import torch
    import torch.nn.functional as F

    reg_loss: Any = 0.0
    for i in range(hidden_states.shape[0]):
        for j in range(hidden_states.shape[1]):
            noise = hidden_states[i:i + 1, j:j + 1, :, :]
            while True:
                roll_amount = torch.randint(noise.shape[2] // 2, (1,), generator=generator).item()
                reg_loss += (noise * torch.roll(noise, shifts=roll_amount, dims=2)).mean() ** 2
                reg_loss += (noise * torch.roll(noise, shifts=roll_amount, dims=3)).mean() ** 2
                if noise.shape[2] <= 8:
                    break
                noise = F.avg_pool2d(noise, kernel_size=2)
    return reg_loss


def kl_divergence(hidden_states: torch.Tensor) -> torch.Tensor:
    """KL divergence of N(mean, var) of all values from N(0, 1) (up to a factor 2)."""
    import torch

    mean, var = hidden_states.mean(), hidden_states.var()
    return var + mean ** 2 - 1 - torch.log(var + 1e-7)


def check_regularizable(height: int, width: int) -> None:
    """The auto-correlation loss rolls by up to half the height and halves the latent
    (2x2 pooling) while it is taller than 8: refuse sizes where that breaks."""
    h, w = height, width
    while h >= 2 and (h <= 8 or w >= 2):
        if h <= 8:
            return
        h, w = h // 2, w // 2
    raise ValueError(f"the noise regularisation cannot read a {height}x{width} latent (it "
                     "needs at least 2 rows, and 2 columns at each halving down to 8 rows): "
                     "set num_reg_steps 0 for this size")


@dataclass
class _RegState:
    generator: Any  # torch.Generator: the rolls' random draws
    sample: Any = None  # this step's UNet input (the latents' rows), for get_epsilon


class InversionRegularizer(SamplerExtension):
    """Pix2Pix-Zero's regularisation of the inversion's noise prediction (its ``invert``:
    ``lambda_auto_corr``, ``lambda_kl``, ``num_reg_steps``, ``num_auto_corr_rolls``).

    Each step, ``num_reg_steps`` times: ``num_auto_corr_rolls`` gradient steps of size
    ``lambda_auto_corr / num_auto_corr_rolls`` on :func:`auto_corr_loss`, then one of
    size ``lambda_kl`` on :func:`kl_divergence`, both of the prediction read as noise ε
    (the pipeline's ``get_epsilon``). The rolls draw from a CPU generator seeded with
    ``seed`` as the pipeline's ``generator``.

    It acts on the step's *guided* prediction, as the pipeline does after classifier-free
    guidance: in the ``guidance`` phase, last of all extensions (the ``predictions`` phase
    comes before guidance is formed, so it could only regularise without CFG).
    """

    priority = 1000  # after every other guidance change: it regularises the final prediction
    without_cfg = True  # cfg 1 (the usual inversion): the prediction is cond + guidance

    def __init__(self, lambda_auto_corr: float = 20.0, lambda_kl: float = 20.0,
                 num_reg_steps: int = 0, num_auto_corr_rolls: int = 5, seed: int = 0):
        if num_reg_steps < 0 or num_auto_corr_rolls < 0:
            raise ValueError("num_reg_steps and num_auto_corr_rolls must be 0 or more")
        self.lambda_auto_corr = float(lambda_auto_corr)
        self.lambda_kl = float(lambda_kl)
        self.num_reg_steps = int(num_reg_steps)
        self.num_auto_corr_rolls = int(num_auto_corr_rolls)
        self.seed = int(seed)

    def setup(self, run: SamplingRun) -> None:
        import torch

        if self.num_reg_steps and self.lambda_auto_corr > 0 and self.num_auto_corr_rolls:
            check_regularizable(*run.init_latents.shape[-2:])
        run.state[self] = _RegState(torch.Generator("cpu").manual_seed(self.seed))

    def unet_inputs(self, run: SamplingRun, step: Step, call: UNetCall) -> None:
        # the latents' rows of the main pass (another extension's pass may call this too)
        if run.attention.roles == run.roles:
            run.state[self].sample = call.latent_input[:run.init_latents.shape[0]]

    def guidance(self, run: SamplingRun, step: Step, preds: Predictions,
                 guidance: torch.Tensor) -> torch.Tensor:
        import torch

        base = preds.uncond if run.do_cfg else preds.cond
        regularised = self.regularise(run, step.timestep, base + guidance)
        # Last of the guidance phase, it makes the regularised prediction the base and
        # returns a zero term: ``base + (regularised - base)`` would round, and the
        # regularisation grows such 1-ulp differences ~100x within a few steps.
        if run.do_cfg:
            preds.uncond = regularised
        else:
            preds.cond = regularised
        return torch.zeros_like(regularised)

    def regularise(self, run: SamplingRun, t: torch.Tensor, noise_pred: torch.Tensor
                   ) -> torch.Tensor:
        """The pipeline's regularisation loop on one guided noise prediction."""
        import torch

        state: _RegState = run.state[self]
        sample = state.sample.detach() if state.sample is not None else None
        with torch.enable_grad():
            for _ in range(self.num_reg_steps):
                if self.lambda_auto_corr > 0:
                    for _ in range(self.num_auto_corr_rolls):
                        var = noise_pred.detach().clone().requires_grad_(True)
                        loss = auto_corr_loss(self._epsilon(run, var, sample, t),
                                              generator=state.generator)
                        (grad,) = torch.autograd.grad(loss, [var])
                        noise_pred = noise_pred - self.lambda_auto_corr * (
                            grad / self.num_auto_corr_rolls)
                if self.lambda_kl > 0:
                    var = noise_pred.detach().clone().requires_grad_(True)
                    (grad,) = torch.autograd.grad(
                        kl_divergence(self._epsilon(run, var, sample, t)), [var])
                    noise_pred = noise_pred - self.lambda_kl * grad
                noise_pred = noise_pred.detach()
        return noise_pred

    @staticmethod
    def _epsilon(run: SamplingRun, model_output: torch.Tensor, sample: torch.Tensor | None,
                 t: torch.Tensor) -> torch.Tensor:
        """The prediction as noise (the pipeline's ``get_epsilon``)."""
        kind = run.scheduler.config.prediction_type
        if kind == "epsilon":
            return model_output
        if sample is None:
            raise RuntimeError("the noise regularisation saw no UNet input this step")
        alpha_prod_t = run.scheduler.alphas_cumprod[int(t)].to(model_output.device)
        beta_prod_t = 1 - alpha_prod_t
        if kind == "sample":
            return (sample - alpha_prod_t ** 0.5 * model_output) / beta_prod_t ** 0.5
        if kind == "v_prediction":
            return alpha_prod_t ** 0.5 * model_output + beta_prod_t ** 0.5 * sample
        raise ValueError(f"prediction_type {kind!r} must be epsilon, sample or v_prediction")

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)
