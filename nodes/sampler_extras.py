"""ComfyUI's remaining sampler nodes: GITSScheduler, SamplerLCMUpscale and
SamplerDPMAdaptative (same ids, inputs, widget order, defaults and bounds).

The two samplers run a loop of their own inside SamplerCustom / SamplerCustomAdvanced
(their SAMPLER carries ``run_custom``); neither is one of KSampler's ``sampler_name``s here
(ComfyUI lists ``dpm_adaptive`` there too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine import ExecutionContext, Input, Node, Output
from nodes.custom_sampling import SamplerChoice
from nodes.diffusion.sigma_schedules import SigmaSchedule

SAMPLERS_CATEGORY = "sampling/custom_sampling/samplers"


@dataclass(frozen=True)
class OwnLoopSampler(SamplerChoice):
    """A SAMPLER whose run is not KSampler's (SamplerCustom calls ``run_custom``);
    ``options`` holds the node's inputs."""

    def run_custom(self, ctx: ExecutionContext, guider: Any, noise: Any,
                   schedule: SigmaSchedule, latent: Any) -> tuple[Any, Any]:
        settings = dict(self.options)
        if self.name == "dpm_adaptive":
            from nodes.diffusion.adaptive_sampler import run_dpm_adaptive
            from nodes.diffusion.dpm_adaptive import AdaptiveOptions

            return run_dpm_adaptive(ctx, guider, noise, AdaptiveOptions(**settings), schedule,
                                    latent)
        if self.name == "lcm_upscale":
            from nodes.diffusion.lcm_upscale import UpscaleOptions, run_lcm_upscale

            return run_lcm_upscale(ctx, guider, noise, UpscaleOptions(**settings), schedule,
                                   latent)
        raise ValueError(f"unknown sampler {self.name!r}")


class GITSScheduler(Node):
    """GITS noise levels (Chen et al. 2024, "On the Trajectory Regularity of ODE-based
    Diffusion Sampling"): tables searched for SD 1.x that spend the steps where the
    sampling trajectory bends. ``coeff`` (0.80-1.50 by 0.05) trades steps at high noise
    for steps at low noise (higher: fewer high-noise steps); 1.20 is the paper's choice.
    Tuned for 2-20 steps (10 is a good start, with euler, dpmpp_2m or ipndm); more steps
    interpolate the 20-step table in log σ. ``denoise`` < 1 keeps the last
    ``round(steps * denoise)`` steps (img2img). The σs are SD 1.x's (σ_max 14.61): on a
    model with another range they are used as they are."""

    TYPE = "GITSScheduler"
    DISPLAY_NAME = "GITSScheduler"
    CATEGORY = "sampling/custom_sampling/schedulers"
    OUTPUTS = (Output("SIGMAS"),)

    coeff: float = Input(1.20, min=0.80, max=1.50, step=0.05)
    steps: int = Input(10, min=2, max=1000)
    denoise: float = Input(1.0, min=0.0, max=1.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[SigmaSchedule]:
        from nodes.diffusion.gits import gits_sigmas

        levels, start = gits_sigmas(self.coeff, self.steps, self.denoise)
        return (SigmaSchedule({}, "normal", len(levels) - 1, start=start,
                              sigma_list=tuple(levels)),)


class SamplerLCMUpscale(Node):
    """LCM sampling that enlarges the image as it goes: after each of the first
    ``scale_steps`` steps the clean-latent estimate is resized (``upscale_method``;
    bislerp keeps latent vectors' lengths) toward ``scale_ratio`` times the input size,
    then re-noised, so the later steps add detail at the larger size. For LCM models
    (LCM LoRA, cfg about 1-2) with an LCM-ready schedule (BasicScheduler, SDTurboScheduler;
    no σ lists; behind Model Sampling Continuous EDM / V it runs that model's own LCM).
    ``scale_steps`` −1: about half the steps. The output latent is the
    larger one. Noise masks, ControlNets, GLIGEN, area prompts and other techniques made
    for the input's size are refused."""

    TYPE = "SamplerLCMUpscale"
    DISPLAY_NAME = "SamplerLCMUpscale"
    CATEGORY = SAMPLERS_CATEGORY
    OUTPUTS = (Output("SAMPLER"),)

    scale_ratio: float = Input(1.0, min=0.1, max=20.0, step=0.01)
    scale_steps: int = Input(-1, min=-1, max=1000, step=1)
    upscale_method: str = Input("bislerp", choices=(
        "bislerp", "nearest-exact", "bilinear", "area", "bicubic"))

    def execute(self, ctx: ExecutionContext) -> tuple[SamplerChoice]:
        from nodes.diffusion.lcm_upscale import UpscaleOptions

        options = UpscaleOptions(self.scale_ratio, self.scale_steps, self.upscale_method)
        options.check()
        return (OwnLoopSampler("lcm_upscale", options=tuple(vars(options).items())),)


class SamplerDPMAdaptative(Node):
    """DPM-Solver with an adaptive step size (Lu et al. 2022): it picks its own steps from
    the schedule's first σ to its last non-zero one (only those two of the SIGMAS count;
    the steps between them only pace progress), taking smaller ones where its low- and
    high-order solutions disagree by more than ``rtol`` (relative) / ``atol`` (absolute).
    Lower tolerances: more model calls, closer to the exact ODE. ``order`` 3: three calls a
    step, 2: two. ``h_init`` is the first step in log σ; pcoeff / icoeff / dcoeff the PID
    step controller's gains, ``accept_safety`` how much of a shrink a step may need and
    still be kept. ``eta`` > 0 adds fresh noise each step (``s_noise`` scales it). At most
    1000 model calls: a run that needs more stops with an error. Not for noise-masked
    latents or techniques that edit the latents at each step."""

    TYPE = "SamplerDPMAdaptative"
    DISPLAY_NAME = "SamplerDPMAdaptative"
    CATEGORY = SAMPLERS_CATEGORY
    OUTPUTS = (Output("SAMPLER"),)

    order: int = Input(3, min=2, max=3)
    rtol: float = Input(0.05, min=0.0, max=100.0, step=0.01)
    atol: float = Input(0.0078, min=0.0, max=100.0, step=0.01)
    h_init: float = Input(0.05, min=0.0, max=100.0, step=0.01)
    pcoeff: float = Input(0.0, min=0.0, max=100.0, step=0.01)
    icoeff: float = Input(1.0, min=0.0, max=100.0, step=0.01)
    dcoeff: float = Input(0.0, min=0.0, max=100.0, step=0.01)
    accept_safety: float = Input(0.81, min=0.0, max=100.0, step=0.01)
    eta: float = Input(0.0, min=0.0, max=100.0, step=0.01)
    s_noise: float = Input(1.0, min=0.0, max=100.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[SamplerChoice]:
        from nodes.diffusion.dpm_adaptive import AdaptiveOptions

        options = AdaptiveOptions(self.order, self.rtol, self.atol, self.h_init, self.pcoeff,
                                  self.icoeff, self.dcoeff, self.accept_safety, self.eta,
                                  self.s_noise)
        options.check()
        return (OwnLoopSampler("dpm_adaptive", self.eta, self.s_noise,
                               options=tuple(vars(options).items())),)


NODE_CLASSES = (GITSScheduler, SamplerLCMUpscale, SamplerDPMAdaptative)
