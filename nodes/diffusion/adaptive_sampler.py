"""SamplerDPMAdaptative in the sampling loop: :func:`nodes.diffusion.dpm_adaptive.dpm_adaptive`
(the solver) run step by step as the sampler's model calls.

The solver ignores the schedule's inner levels: it integrates from its first σ to its
last non-zero one and returns the latent there (ComfyUI's result, which keeps that σ_min's
faint noise). In the sampling loop (:func:`run_dpm_adaptive`) the schedule's steps still
count: :class:`AdaptiveDriver`, the outermost ``denoise`` wrapper, runs the solver's steps
inside loop step i until the solver has passed the schedule's σ_{i+1}, so progress,
previews and the steps' phases follow σ; every model call is a normal step pass (CFG,
ControlNet, SEGA, MultiDiffusion... see it) whose :class:`Step` is the schedule step its σ
lies in, with the call's own (continuous) timestep. A rejected step's retry reuses its
first model call (k-diffusion calls the model again on the same input: same result, one
call less). On a continuous-σ model (Model Sampling Continuous EDM / V) each call uses the
model's own c_in (σ_data), c_noise and x0 reading (:class:`ContinuousAdaptiveEvaluator`).
At most :data:`nodes.diffusion.dpm_adaptive.MAX_MODEL_CALLS` model calls: a run that
needs more is an error that says how to loosen it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from nodes.diffusion.continuous_samplers import ContinuousBase
from nodes.diffusion.dpm_adaptive import AdaptiveOptions, AdaptiveSolver, working
from nodes.diffusion.extensions import Denoise, SamplerExtension, Step
from nodes.diffusion.sigma_samplers import SigmaSampler

# --- in the sampling loop ----------------------------------------------------------------


class _CallSigma:
    """The σ of the model call under way. Shared, not copied, by ``deepcopy`` (MultiDiffusion
    saves and restores the scheduler's ``__dict__`` around each window)."""

    sigma: float | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> _CallSigma:
        return self


class _EvaluatorCalls:
    """A scheduler whose step pass evaluates the model: ``scale_model_input`` scales for
    the call's σ (``c_in``), ``step`` returns ``D(x, σ)`` (the solver lives in
    :class:`AdaptiveDriver`)."""

    @property
    def call(self) -> _CallSigma:
        """The model call under way (made on first use: diffusers builds schedulers from
        their ``__init__``'s signature)."""
        call = self.__dict__.get("_call")
        if call is None:
            call = self.__dict__["_call"] = _CallSigma()
        return call

    def c_in(self, sigma: float) -> float:
        return 1 / (sigma ** 2 + 1) ** 0.5

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        sigma = self.call.sigma
        if sigma is None:  # outside a model call (the loop's own scale queries)
            return super().scale_model_input(sample, timestep)  # type: ignore[misc]
        return sample * self.c_in(sigma)

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True,
             **_: Any) -> EulerDiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        sigma = self.call.sigma
        if sigma is None:
            raise RuntimeError("dpm_adaptive's scheduler stepped outside a model call")
        denoised = self.denoised(model_output, sample.float(), sigma)  # type: ignore[attr-defined]
        if not return_dict:
            return denoised, denoised
        return EulerDiscreteSchedulerOutput(prev_sample=denoised, pred_original_sample=denoised)


class AdaptiveEvaluator(_EvaluatorCalls, EulerDiscreteScheduler):
    """:class:`_EvaluatorCalls` on Euler's scheduler (σ lists, initial noise,
    ``add_noise``) of a discrete model: σ_data 1, the output read by prediction type."""

    denoised = SigmaSampler.denoised

    def call_timestep(self, sigma: float) -> float:
        """The (continuous) model timestep of ``sigma``."""
        if (self.config.timestep_type == "continuous"
                and self.config.prediction_type == "v_prediction"):
            return 0.25 * math.log(sigma)
        log_sigmas = np.log(np.array(((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5))
        return float(self._sigma_to_t(np.array(sigma), log_sigmas))


class ContinuousAdaptiveEvaluator(_EvaluatorCalls, ContinuousBase):
    """:class:`_EvaluatorCalls` on a continuous-σ model's scheduler: its own c_in (σ_data),
    timestep (c_noise) and x0 reading (EDM, v, eps: ComfyUI's ``calculate_denoised``)."""

    def c_in(self, sigma: float) -> float:
        return 1 / (sigma ** 2 + self.config.sigma_data ** 2) ** 0.5

    def call_timestep(self, sigma: float) -> float:
        return float(self.precondition_noise(float(sigma)))


class AdaptiveDriver(SamplerExtension):
    """Runs :class:`AdaptiveSolver` inside the loop's steps (see the module docstring).
    Made per run: the last accepted step's D lands in ``result["x0"]``."""

    priority = 1_000_000  # the outermost denoise wrapper: every other one wraps each call

    def __init__(self, options: AdaptiveOptions, levels: Sequence[float],
                 report: Callable[[float], None] | None = None,
                 check_interrupt: Callable[[], None] | None = None,
                 max_calls: int | None = None):
        self.options = options
        self.levels = tuple(float(v) for v in levels)
        self.report = report
        self.check_interrupt = check_interrupt
        self.max_calls = max_calls
        self.result: dict[str, torch.Tensor] = {}

    @property
    def sigma_range(self) -> tuple[float, float]:
        """(σ_max, σ_min): the first level and the last non-zero one (ComfyUI's)."""
        last = self.levels[-1] if self.levels[-1] > 0 else self.levels[-2]
        return self.levels[0], last

    def setup(self, run: Any) -> None:
        run.state[self] = {"solver": None, "returned": None}

    def denoise(self, run: Any, denoise: Denoise) -> Denoise:
        return partial(self._loop_step, denoise)

    def step_of(self, sigma: float) -> int:
        """The schedule step (0 ... N − 1) whose σ interval holds ``sigma``."""
        steps = len(self.levels) - 1
        falling = self.levels[-1] < self.levels[0]
        inside = sum(1 for level in self.levels[1:steps]
                     if (sigma <= level if falling else sigma >= level))
        return min(inside, steps - 1)

    def position(self, solver: AdaptiveSolver) -> float:
        """How far the solver is, in schedule steps (fractional, by log σ)."""
        i = self.step_of(solver.sigma)
        upper, lower = self.levels[i], self.levels[i + 1]
        if lower <= 0:
            return float(i)
        span = math.log(upper) - math.log(lower)
        return i + min(max((math.log(upper) - math.log(solver.sigma)) / span, 0.0), 1.0)

    def _evaluate(self, run: Any, inner: Denoise, x: torch.Tensor, sigma: float
                  ) -> torch.Tensor:
        if self.check_interrupt is not None:
            self.check_interrupt()
        scheduler = run.scheduler
        timestep = torch.tensor(scheduler.call_timestep(sigma), dtype=torch.float32,
                                device=run.device)
        call = Step(self.step_of(sigma), len(self.levels) - 1, timestep)
        scheduler.call.sigma = sigma
        try:
            return inner(run, call, x.to(run.dtype)).float()
        finally:
            scheduler.call.sigma = None

    def _loop_step(self, inner: Denoise, run: Any, step: Step, latents: torch.Tensor
                   ) -> torch.Tensor:
        state = run.state[self]
        solver: AdaptiveSolver | None = state["solver"]
        if solver is None:
            sigma_max, sigma_min = self.sigma_range
            noise = partial(self._noise, run)
            solver = AdaptiveSolver(latents, sigma_max, sigma_min, self.options,
                                    partial(self._evaluate, run, inner), noise, self.max_calls)
            state["solver"] = solver
        elif latents is not state["returned"]:  # another phase changed the latents
            solver.x = working(latents)
        last = step.index >= step.total - 1
        boundary = self.levels[min(step.index + 1, len(self.levels) - 1)]
        while not solver.done and (last or not solver.passed(boundary)):
            if solver.attempt() and self.report is not None:
                self.report(self.position(solver))
        if solver.last_denoised is not None:
            self.result["x0"] = solver.last_denoised
        state["returned"] = solver.x.to(latents.dtype)
        return state["returned"]

    @staticmethod
    def _noise(run: Any, like: torch.Tensor) -> torch.Tensor:
        return randn_tensor(like.shape, generator=run.generator, device=like.device,
                            dtype=like.dtype)

    def teardown(self, run: Any) -> None:
        run.state.pop(self, None)


def refused_extensions(extensions: Sequence[SamplerExtension]) -> list[str]:
    """The attached techniques dpm_adaptive cannot honour: those that change the latents
    between steps (their ``pre_step`` / ``post_step`` expect the schedule's σs, which the
    solver does not stop at) and noise masks."""
    base = SamplerExtension
    out = []
    for ext in extensions:
        cls = type(ext)
        # step-state-only ones follow the schedule step the solver is in
        if ext.step_state_only or isinstance(ext, AdaptiveDriver):
            continue
        if (cls.pre_step is not base.pre_step or cls.post_step is not base.post_step
                or cls.noise_mask is not base.noise_mask):
            out.append(ext.label or cls.__name__)
    return out


def window_levels(schedule: Any) -> list[float]:
    """The σs of a SIGMAS window (``len(window) + 1`` of them)."""
    explicit = schedule.explicit()
    levels = explicit.sigma_list or ()
    return [float(v) for v in levels[explicit.start:explicit.stop + 1]]


def run_dpm_adaptive(ctx: Any, guider: Any, noise: Any, options: AdaptiveOptions,
                     schedule: Any, latent: Any) -> tuple[Any, Any]:
    """SamplerCustom's run with dpm_adaptive: (output, denoised_output)."""
    from nodes.diffusion.continuous import CONFIG_KEYS, is_continuous
    from nodes.diffusion.sampling import collect_extensions, sample
    from nodes.diffusion.schedulers import (
        _SIGMA_OPTIONS,
        make_sigma_list_scheduler,
        with_sigma_list,
    )
    from nodes.diffusion.sigma_schedules import SigmaSchedule
    from nodes.sampling import step_reporter

    options.check()
    levels = window_levels(schedule)
    if levels[-1] == 0 and len(levels) < 3:
        raise ValueError("dpm_adaptive integrates from the schedule's first σ to its last "
                         "non-zero one: a one-step schedule ending at 0 has nothing between "
                         "them; give it at least 2 steps")
    if 0.0 in levels[:-1] or any(v < 0 for v in levels):
        raise ValueError("dpm_adaptive: only the schedule's last σ may be 0")
    if levels[-1] > levels[0] and options.eta:
        raise ValueError("dpm_adaptive: eta must be 0 on a rising schedule (FlipSigmas)")
    if latent.noise_mask is not None:
        raise ValueError("dpm_adaptive cannot sample a latent with a noise mask (inpainting "
                         "blends the kept region at each step's σ, which the adaptive solver "
                         "does not stop at): remove the mask or use another sampler")
    config = dict(guider.model.scheduler_config)
    driver = AdaptiveDriver(options, levels, None, ctx.check_interrupt)
    model = guider.model.with_extension(driver)
    refused = refused_extensions(collect_extensions(model, guider.positive, guider.negative,
                                                    latent))
    if refused:
        raise ValueError(f"dpm_adaptive cannot run with {', '.join(sorted(set(refused)))}: "
                         f"they change the latents at each step of the schedule, which the "
                         f"adaptive solver does not stop at; use a fixed-step sampler")
    window = SigmaSchedule(config, "normal", len(levels) - 1,
                           sigma_list=tuple(levels)).for_model(config)
    if schedule.sigma_list is None and schedule.timesteps is None and schedule.start == 0:
        # a model's whole schedule starts from noise as with the other samplers (scaled by
        # the scheduler's init_noise_sigma), wherever its first σ lies
        window = replace(window, denoise=1.0)
    if is_continuous(config):  # Model Sampling Continuous EDM / V: its own σ_data, c_noise
        evaluator: Any = ContinuousAdaptiveEvaluator.from_config(
            {k: v for k, v in config.items() if k in CONFIG_KEYS})
    else:
        base = make_sigma_list_scheduler(
            "euler", {k: v for k, v in config.items() if k not in _SIGMA_OPTIONS})
        evaluator = AdaptiveEvaluator.from_config(base.config)
    scheduler = with_sigma_list(evaluator, lambda _steps: list(levels))
    units = 100  # progress units per schedule step
    total = (len(levels) - 1) * units
    reporter = step_reporter(ctx, guider.model)
    done = [0]  # progress never goes back (a solver step may pass several levels)

    def report(position: float) -> None:
        done[0] = max(done[0], min(round(position * units), total))
        ctx.progress(done[0], total)

    def on_step(step: int, steps: int, latents: torch.Tensor,
                denoised: Callable[[], torch.Tensor | None] | None = None) -> None:
        done[0] = max(done[0], step * units)
        reporter(done[0], total, latents, denoised=denoised)

    driver.report = report

    params = window.params(noise.seed, guider.cfg, noise.add)
    ctx.check_interrupt()
    results: dict[str, torch.Tensor] = {}
    samples = sample(model, scheduler, guider.positive, guider.negative, latent, params,
                     callback=on_step, results=results)
    out = replace(latent, samples=samples, extension_results=tuple(results.items()))
    x0 = driver.result.get("x0")
    denoised = out if x0 is None else replace(out, samples=x0.to(samples.dtype))
    return out, denoised

