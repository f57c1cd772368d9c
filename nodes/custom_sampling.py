"""ComfyUI's custom sampling nodes (same node ids, inputs, defaults and bounds).

KSampler's choices become separate values: a SAMPLER (KSamplerSelect), a schedule
SIGMAS (BasicScheduler, SDTurboScheduler, split with SplitSigmas), a NOISE (RandomNoise,
DisableNoise) and a GUIDER (BasicGuider, CFGGuider), which SamplerCustom or
SamplerCustomAdvanced run.

A SIGMAS value is a recipe (:class:`nodes.diffusion.sigma_schedules.SigmaSchedule`),
not a tensor: the samplers run it through KSampler's loop and diffusers' schedulers, so
BasicScheduler + SamplerCustom equals KSampler, and SplitSigmas' two halves equal
KSamplerAdvanced's start/end steps. Where this differs from ComfyUI:

- BasicScheduler's ``denoise`` is KSampler's here (diffusers' img2img strength: 20 steps
  at 0.5 run the last 10 of a 20-step schedule); ComfyUI runs 20 steps over the low-noise
  end of a 40-step schedule.
- An empty window (a split at its end, denoise 0) returns the latent unchanged.
- SDTurboScheduler's timesteps run only with samplers whose diffusers scheduler takes
  custom timesteps (euler, euler_ancestral, heun, dpmpp_2m, ddpm, lcm, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import Conditioning, DiffusionModel, Latent
from nodes.diffusion.schedulers import SAMPLERS, SCHEDULES
from nodes.diffusion.sigma_schedules import SigmaSchedule, turbo_timesteps
from nodes.sampling import step_reporter
from nodes.sampling_advanced import FinalDenoise

if TYPE_CHECKING:
    import torch

MAX_SEED = 2**64 - 1


@dataclass(frozen=True)
class SamplerChoice:
    """SAMPLER: one of KSampler's sampler names, with the options of ComfyUI's sampler
    nodes (SamplerEulerAncestral's eta and s_noise, SamplerLMS's order, the stage
    samplers' options)."""

    name: str
    eta: float = 1.0
    s_noise: float = 1.0
    order: int | None = None
    #: other options of a sampler node (SamplerER_SDE's solver_type, SamplerSASolver's
    #: orders, ...) as (name, value) pairs, for the sampler's ``configure``
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class NoiseSource:
    """NOISE: the initial noise's seed, or none (``add`` False: the latent is already
    noisy at the schedule's first step)."""

    seed: int = 0
    add: bool = True


@dataclass(frozen=True)
class Guider:
    """GUIDER: the model and prompts to sample with, and the guidance scale (<= 1: the
    positive prompt alone, one UNet pass a step)."""

    model: DiffusionModel
    positive: Conditioning
    negative: Conditioning
    cfg: float


# --- samplers and schedules -------------------------------------------------------------------


class KSamplerSelect(Node):
    """Pick a sampler (KSampler's ``sampler_name`` list) for SamplerCustom."""

    TYPE = "KSamplerSelect"
    DISPLAY_NAME = "KSamplerSelect"
    CATEGORY = "sampling/custom_sampling/samplers"
    OUTPUTS = (Output("SAMPLER"),)

    sampler_name: str = Input("euler", choices=tuple(SAMPLERS))

    def execute(self, ctx: ExecutionContext) -> tuple[SamplerChoice]:
        return (SamplerChoice(self.sampler_name),)


class BasicScheduler(Node):
    """The schedule KSampler would run: ``steps`` steps spaced by ``scheduler``.

    ``denoise`` < 1 keeps the last ``int(steps * denoise)`` of them (KSampler's img2img
    strength; ComfyUI instead runs ``steps`` steps of a longer schedule).
    """

    TYPE = "BasicScheduler"
    DISPLAY_NAME = "BasicScheduler"
    CATEGORY = "sampling/custom_sampling/schedulers"
    OUTPUTS = (Output("SIGMAS"),)

    model: DiffusionModel = Input(type="MODEL")
    scheduler: str = Input("normal", choices=tuple(SCHEDULES))
    steps: int = Input(20, min=1, max=10000)
    denoise: float = Input(1.0, min=0.0, max=1.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[SigmaSchedule]:
        start = 0
        if self.denoise < 1.0:  # as prepare_timesteps cuts KSampler's schedule
            start = self.steps - min(int(self.steps * self.denoise), self.steps)
        return (SigmaSchedule(dict(self.model.scheduler_config), self.scheduler, self.steps,
                              start=start),)


class SDTurboScheduler(Node):
    """SD-Turbo / SDXL-Turbo's schedule: the first ``steps`` of the timesteps 999, 899,
    ..., 99, starting lower when ``denoise`` < 1 (0.5: 499, 399, ...); use cfg 1.

    Samplers whose diffusers scheduler takes custom timesteps only (euler,
    euler_ancestral, heun, dpmpp_2m, ddpm, lcm, ...).
    """

    TYPE = "SDTurboScheduler"
    DISPLAY_NAME = "SDTurboScheduler"
    CATEGORY = "sampling/custom_sampling/schedulers"
    OUTPUTS = (Output("SIGMAS"),)

    model: DiffusionModel = Input(type="MODEL")
    steps: int = Input(1, min=1, max=10)
    denoise: float = Input(1.0, min=0.0, max=1.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[SigmaSchedule]:
        config = dict(self.model.scheduler_config)
        trained = int(config.get("num_train_timesteps", 1000))
        if trained < 1000:
            raise ValueError(f"SDTurboScheduler needs a model trained on 1000 timesteps; "
                             f"this one has {trained}")
        timesteps = turbo_timesteps(self.steps, self.denoise)
        return (SigmaSchedule(config, "normal", len(timesteps), timesteps=timesteps,
                              denoise=self.denoise),)


class SplitSigmas(Node):
    """Split a schedule after its first ``step`` steps: ``high_sigmas`` for a first
    sampler, ``low_sigmas`` for a second one with add_noise off (the two runs equal the
    whole one, as KSamplerAdvanced's start_at_step / end_at_step)."""

    TYPE = "SplitSigmas"
    DISPLAY_NAME = "SplitSigmas"
    CATEGORY = "sampling/custom_sampling/sigmas"
    OUTPUTS = (Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas"))

    sigmas: SigmaSchedule = Input(type="SIGMAS")
    step: int = Input(0, min=0, max=10000)

    def execute(self, ctx: ExecutionContext) -> tuple[SigmaSchedule, SigmaSchedule]:
        return _schedule(self.sigmas).split(self.step)


class SplitSigmasDenoise(Node):
    """Split a schedule so ``low_sigmas`` holds its last ``round(steps * denoise)`` steps
    and ``high_sigmas`` the ones before."""

    TYPE = "SplitSigmasDenoise"
    DISPLAY_NAME = "SplitSigmasDenoise"
    CATEGORY = "sampling/custom_sampling/sigmas"
    OUTPUTS = (Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas"))

    sigmas: SigmaSchedule = Input(type="SIGMAS")
    denoise: float = Input(1.0, min=0.0, max=1.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[SigmaSchedule, SigmaSchedule]:
        schedule = _schedule(self.sigmas)
        return schedule.split(len(schedule) - round(len(schedule) * self.denoise))


# --- noise and guiders ------------------------------------------------------------------------


class RandomNoise(Node):
    """Initial noise from ``noise_seed`` (KSampler's seed: a CPU generator)."""

    TYPE = "RandomNoise"
    DISPLAY_NAME = "RandomNoise"
    CATEGORY = "sampling/custom_sampling/noise"
    OUTPUTS = (Output("NOISE"),)

    noise_seed: int = Input(0, min=0, max=MAX_SEED, control_after_generate=True)

    def execute(self, ctx: ExecutionContext) -> tuple[NoiseSource]:
        return (NoiseSource(self.noise_seed),)


class DisableNoise(Node):
    """No initial noise: the latent is already noisy at the schedule's first step (a
    previous stage's leftover noise)."""

    TYPE = "DisableNoise"
    DISPLAY_NAME = "DisableNoise"
    CATEGORY = "sampling/custom_sampling/noise"
    OUTPUTS = (Output("NOISE"),)

    def execute(self, ctx: ExecutionContext) -> tuple[NoiseSource]:
        return (NoiseSource(0, add=False),)


class AddNoise(Node):
    """Noise a latent to the level of a schedule's window (|first − last| σ, as ComfyUI),
    for a sampler that then runs with DisableNoise; the result is in the space a LATENT
    with leftover noise is kept in (what the UNet sees), so the sampler reads it right."""

    TYPE = "AddNoise"
    DISPLAY_NAME = "AddNoise"
    CATEGORY = "_for_testing/custom_sampling/noise"
    OUTPUTS = (Output("LATENT"),)

    model: DiffusionModel = Input(type="MODEL")
    noise: NoiseSource = Input(type="NOISE")
    sigmas: SigmaSchedule = Input(type="SIGMAS")
    latent_image: Latent = Input(type="LATENT")

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        import torch

        from nodes.diffusion.sampling import batch_noise

        if not isinstance(self.noise, NoiseSource):
            raise ValueError("noise must come from RandomNoise or DisableNoise")
        levels = _schedule(self.sigmas).for_model(self.model.scheduler_config).sigmas()
        if len(levels) == 0:
            return (self.latent_image,)
        scale = float(abs(levels[0] - levels[-1])) if len(levels) > 1 else float(levels[0])
        samples = self.latent_image.samples
        noise = (batch_noise(tuple(samples.shape), self.latent_image.batch_index,
                             torch.Generator("cpu").manual_seed(self.noise.seed),
                             samples.device, samples.dtype)
                 if self.noise.add else torch.zeros_like(samples))
        noisy = (samples + noise * scale) / (scale ** 2 + 1) ** 0.5
        return (replace(self.latent_image, samples=torch.nan_to_num(noisy)),)


class BasicGuider(Node):
    """Sample with one prompt and no guidance (cfg 1: one UNet pass a step), as
    distilled models (SD-Turbo, LCM, Flux) want."""

    TYPE = "BasicGuider"
    DISPLAY_NAME = "Basic Guider"
    CATEGORY = "sampling/custom_sampling/guiders"
    OUTPUTS = (Output("GUIDER"),)

    model: DiffusionModel = Input(type="MODEL")
    conditioning: Conditioning = Input(type="CONDITIONING")

    def execute(self, ctx: ExecutionContext) -> tuple[Guider]:
        # cfg 1 never reads the negative: the positive stands in for it
        return (Guider(self.model, self.conditioning, self.conditioning, 1.0),)


class CFGGuider(Node):
    """Sample with classifier-free guidance, as KSampler (cfg <= 1 disables it)."""

    TYPE = "CFGGuider"
    DISPLAY_NAME = "CFG Guider"
    CATEGORY = "sampling/custom_sampling/guiders"
    OUTPUTS = (Output("GUIDER"),)

    model: DiffusionModel = Input(type="MODEL")
    positive: Conditioning = Input(type="CONDITIONING")
    negative: Conditioning = Input(type="CONDITIONING")
    cfg: float = Input(8.0, min=0.0, max=100.0, step=0.1)

    def execute(self, ctx: ExecutionContext) -> tuple[Guider]:
        return (Guider(self.model, self.positive, self.negative, self.cfg),)


# --- the samplers -----------------------------------------------------------------------------


def _schedule(value: Any) -> SigmaSchedule:
    if not isinstance(value, SigmaSchedule):
        raise ValueError(f"sigmas must come from a Steerflow schedule node (BasicScheduler, "
                         f"SDTurboScheduler, KarrasScheduler, AlignYourStepsScheduler, "
                         f"SplitSigmas, ...), not {type(value).__name__}")
    return value


def _keep_unmasked(latent: Latent, x0: torch.Tensor) -> torch.Tensor:
    """The noise mask's kept region is the input latent itself once fully denoised."""
    from nodes.diffusion.masking import mask_to_latent, match_batch

    if latent.noise_mask is None:
        return x0
    init = latent.samples.to(device=x0.device, dtype=x0.dtype)
    mask = mask_to_latent(latent.noise_mask, tuple(init.shape[-2:]))
    mask = match_batch(mask, init.shape[0], "noise mask").to(device=x0.device, dtype=x0.dtype)
    return (1 - mask) * init + mask * x0


def run_custom(ctx: ExecutionContext, guider: Guider, noise: NoiseSource,
               sampler: SamplerChoice, sigmas: SigmaSchedule, latent: Latent
               ) -> tuple[Latent, Latent]:
    """Sample ``latent`` over the window ``sigmas``; returns (output, denoised_output):
    the window's result (with leftover noise when it stops early) and its last step's
    prediction of the clean latent."""
    from nodes.diffusion.sampling import sample

    schedule = _schedule(sigmas).for_model(guider.model.scheduler_config)
    if not isinstance(sampler, SamplerChoice):
        raise ValueError("sampler must come from KSamplerSelect")
    if len(schedule) == 0:
        return latent, latent  # an empty window leaves the latent as it is
    own_loop = getattr(sampler, "run_custom", None)
    if own_loop is not None:  # a sampler with a run of its own (nodes/sampler_extras.py)
        return own_loop(ctx, guider, noise, schedule, latent)
    final = FinalDenoise()
    model = guider.model.with_extension(final)  # a handle for this run only
    tuned = (sampler.eta, sampler.s_noise) != (1.0, 1.0)
    if tuned and sampler.name.startswith("dpmpp_2m_sde"):
        schedule = schedule.explicit()  # its eta and s_noise are its σ-space twin's
    scheduler = schedule.make_scheduler(sampler.name, seed=noise.seed)
    if tuned or sampler.order is not None or sampler.options:
        from nodes.diffusion.stage_samplers import with_stage_options

        scheduler = with_stage_options(scheduler, sampler.name, sampler.eta, sampler.s_noise,
                                       sampler.order, dict(sampler.options))
    params = schedule.params(noise.seed, guider.cfg, noise.add)
    ctx.check_interrupt()
    results: dict[str, torch.Tensor] = {}
    samples = sample(model, scheduler, guider.positive, guider.negative, latent, params,
                     callback=step_reporter(ctx, model), results=results)
    out = latent.sampled(model, samples, results)
    x0 = final.result.get("x0")
    denoised = out if x0 is None else replace(out, samples=_keep_unmasked(latent, x0))
    return out, denoised


class PerpNegGuider(Node):
    """CFG Guider with Perp-Neg: the negative prompt removes only what it does not share
    with the positive one (see Perp-Neg); link the empty prompt's conditioning."""

    TYPE = "PerpNegGuider"
    DISPLAY_NAME = "PerpNegGuider"
    CATEGORY = "_for_testing"
    OUTPUTS = (Output("GUIDER"),)

    model: DiffusionModel = Input(type="MODEL")
    positive: Conditioning = Input(type="CONDITIONING")
    negative: Conditioning = Input(type="CONDITIONING")
    empty_conditioning: Conditioning = Input(type="CONDITIONING")
    cfg: float = Input(8.0, min=0.0, max=100.0, step=0.1)
    neg_scale: float = Input(1.0, min=0.0, max=100.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[Guider]:
        from nodes.diffusion.perp_neg import PerpNeg

        model = self.model.with_extension(PerpNeg(self.empty_conditioning, self.neg_scale))
        return (Guider(model, self.positive, self.negative, self.cfg),)


class DualCFGGuider(Node):
    """Guidance from three prompts: ``cond1`` (the subject), ``cond2`` (a middle prompt,
    e.g. a style, or the image-only condition of an edit) and the negative. ``regular``:
    ``n + cfg_cond2_negative·(cond2 − n) + cfg_conds·(cond1 − cond2)``; ``nested``:
    cond1 guided from cond2 first, that guided from the negative. With cond2 = negative
    it is CFG at cfg_conds; with cond2 = cond1, CFG at cfg_cond2_negative. One extra
    UNet row a step."""

    TYPE = "DualCFGGuider"
    DISPLAY_NAME = "DualCFGGuider"
    CATEGORY = "sampling/custom_sampling/guiders"
    OUTPUTS = (Output("GUIDER"),)

    model: DiffusionModel = Input(type="MODEL")
    cond1: Conditioning = Input(type="CONDITIONING")
    cond2: Conditioning = Input(type="CONDITIONING")
    negative: Conditioning = Input(type="CONDITIONING")
    cfg_conds: float = Input(8.0, min=0.0, max=100.0, step=0.1)
    cfg_cond2_negative: float = Input(8.0, min=0.0, max=100.0, step=0.1)
    style: str = Input("regular", choices=("regular", "nested"))

    def execute(self, ctx: ExecutionContext) -> tuple[Guider]:
        from nodes.diffusion.dual_cfg import DualCFG

        model = self.model.with_extension(DualCFG(self.cond2, self.cfg_conds,
                                                  self.cfg_cond2_negative, self.style))
        # a cfg above 1 makes the sampler predict the negative; DualCFG replaces its term
        return (Guider(model, self.cond1, self.negative, 2.0),)


class SamplerCustom(Node):
    """Sample with a SAMPLER (KSamplerSelect) over a schedule SIGMAS (BasicScheduler,
    SDTurboScheduler, SplitSigmas).

    ``add_noise`` off: the latent is already noisy at the schedule's first step (the
    ``high_sigmas`` half's output). ``output`` keeps any leftover noise of a shortened
    schedule; ``denoised_output`` is the last step's prediction of the clean latent.
    """

    TYPE = "SamplerCustom"
    DISPLAY_NAME = "SamplerCustom"
    CATEGORY = "sampling/custom_sampling"
    OUTPUTS = (Output("LATENT", "output"), Output("LATENT", "denoised_output"))

    model: DiffusionModel = Input(type="MODEL")
    add_noise: bool = Input(True)
    noise_seed: int = Input(0, min=0, max=MAX_SEED, control_after_generate=True)
    cfg: float = Input(8.0, min=0.0, max=100.0, step=0.1,
                       description="Classifier-free guidance scale; <= 1 disables guidance")
    positive: Conditioning = Input(type="CONDITIONING")
    negative: Conditioning = Input(type="CONDITIONING")
    sampler: SamplerChoice = Input(type="SAMPLER")
    sigmas: SigmaSchedule = Input(type="SIGMAS")
    latent_image: Latent = Input(type="LATENT")

    def execute(self, ctx: ExecutionContext) -> tuple[Latent, Latent]:
        guider = Guider(self.model, self.positive, self.negative, self.cfg)
        return run_custom(ctx, guider, NoiseSource(self.noise_seed, self.add_noise),
                          self.sampler, self.sigmas, self.latent_image)


class SamplerCustomAdvanced(Node):
    """SamplerCustom with its noise (RandomNoise, DisableNoise) and model, prompts and
    cfg (BasicGuider, CFGGuider) as separate inputs."""

    TYPE = "SamplerCustomAdvanced"
    DISPLAY_NAME = "SamplerCustomAdvanced"
    CATEGORY = "sampling/custom_sampling"
    OUTPUTS = (Output("LATENT", "output"), Output("LATENT", "denoised_output"))

    noise: NoiseSource = Input(type="NOISE")
    guider: Guider = Input(type="GUIDER")
    sampler: SamplerChoice = Input(type="SAMPLER")
    sigmas: SigmaSchedule = Input(type="SIGMAS")
    latent_image: Latent = Input(type="LATENT")

    def execute(self, ctx: ExecutionContext) -> tuple[Latent, Latent]:
        if not isinstance(self.noise, NoiseSource) or not isinstance(self.guider, Guider):
            raise ValueError("noise and guider must come from RandomNoise / DisableNoise "
                             "and BasicGuider / CFGGuider")
        return run_custom(ctx, self.guider, self.noise, self.sampler, self.sigmas,
                          self.latent_image)


NODE_CLASSES = (KSamplerSelect, BasicScheduler, SDTurboScheduler, SplitSigmas,
                SplitSigmasDenoise, RandomNoise, DisableNoise, BasicGuider, CFGGuider,
                SamplerCustom, SamplerCustomAdvanced, PerpNegGuider, DualCFGGuider, AddNoise)
