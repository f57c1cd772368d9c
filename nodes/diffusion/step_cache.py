"""EasyCache and LazyCache: training-free step caching (ComfyUI's ``nodes_easycache``;
EasyCache: Zhou et al. 2025).

Both keep, from the last step that really ran, the *transformation* of the model — its
output minus its input — and reuse it while the inputs change slowly. The rule, shared
by both (:class:`_Rule`):

* ``x`` is the model's input, ``y`` its output; ``sub()`` takes every 8th pixel of each
  row and column (``subsample_factor``); ``|a|`` is the mean absolute value.
* After a computed step: ``k = |sub(y) − sub(y_prev)| / |sub(x) − sub(x_prev)|`` (how
  strongly the output followed the input, from the last two computed steps), then
  ``x_prev, y_prev = sub(x), sub(y)``, ``norm = |y|`` (the whole output) and the cached
  difference ``y − x``.
* Before a step, once ``k`` is known: ``acc += k · |sub(x) − x_prev| / norm``. While
  ``acc < reuse_threshold`` the step is skipped: its output is ``x + (y − x)_cached``
  (nothing else is updated, so ``acc`` keeps growing with the input's distance from the
  last computed step); otherwise ``acc`` goes back to 0 and the model runs.
* Only inside ``[start_percent, end_percent]`` of the schedule (ComfyUI's
  ``percent_to_sigma`` bounds, on the timestep axis); past ``end_percent`` the model
  runs and nothing is measured.

The two differ in what "the model" is:

* **EasyCache** wraps the main UNet pass (``unet_forward``): ``x`` is the UNet's latent
  input (scaled, the latent channels only), ``y`` its raw prediction for the whole
  batch ``[uncond, cond, ...]``. Only the first batch role's rows (the unconditional one
  with CFG, as ComfyUI batches them) are measured; the norm and the cached difference
  cover every row. Measuring starts at the first step inside the window; before it only
  the difference is cached. Extensions' own passes (SAG's, FABRIC's) always run; a
  ControlNet still runs on a skipped step (as in ComfyUI, where control is computed
  before the model call).
* **LazyCache** wraps the whole step (``denoise``): ``x`` is the noisy latent in σ space
  (``x0 + σ·ε``), ``y`` the guided x̂₀ after every guidance term (ComfyUI's
  ``predict_noise``), so a skipped step runs no UNet pass at all (neither the
  extensions' ones). It measures on every computed step, also before the window.

Departures from ComfyUI: a change of the latent's shape, dtype or device during a run
starts the rule over with ``k`` unknown (ComfyUI resets ``k`` to 0, which makes the next
step after the first one skip at once); a UNet called more than once per step (Multi
Diffusion's windows) turns the cache off for that run with a warning instead of
measuring one window against another; a UNet that predicts extra channels (learned
variance) gets the last computed step's extra channels on a skipped step. On a skipped
LazyCache step a CFG++ sampler renoises with the last computed step's unconditional x̂₀
(ComfyUI's sampler likewise keeps the stale one).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from nodes.diffusion.extensions import Denoise, SamplerExtension, Step, UNetCall, UNetForward
from nodes.diffusion.hook_groups import percent_timestep

if TYPE_CHECKING:
    from nodes.diffusion.sampling import SamplingRun

logger = logging.getLogger(__name__)

#: ComfyUI's subsample factor (every 8th pixel per side is measured)
SUBSAMPLE_FACTOR = 8


def subsample(x: torch.Tensor, factor: int = SUBSAMPLE_FACTOR) -> torch.Tensor:
    """Every ``factor``-th pixel of the last two axes (a view)."""
    return x[..., ::factor, ::factor] if factor > 1 else x


def mean_abs(x: torch.Tensor) -> torch.Tensor:
    return x.flatten().abs().mean()


@dataclass
class _Rule:
    """The change-rate accumulator of one run (see the module docstring)."""

    threshold: float
    k: torch.Tensor | None = None
    accumulated: torch.Tensor | float = 0.0
    x_prev: torch.Tensor | None = None
    y_prev: torch.Tensor | None = None
    norm: torch.Tensor | None = None

    def skip(self, x_sub: torch.Tensor, can_reuse: bool = True
             ) -> tuple[bool, torch.Tensor | None]:
        """Whether this step reuses the cache, and the input's change (None before the
        first computed step)."""
        change = None if self.x_prev is None else mean_abs(x_sub - self.x_prev)
        if self.norm is not None and self.k is not None and change is not None:
            self.accumulated = self.accumulated + self.k * change / self.norm
            if bool(self.accumulated < self.threshold) and can_reuse:
                return True, change
            self.accumulated = 0.0
        return False, change

    def learn(self, x_sub: torch.Tensor, y_sub: torch.Tensor, y: torch.Tensor,
              change: torch.Tensor | None) -> None:
        """After a computed step: the new rate ``k`` and the step's references."""
        if self.norm is not None and self.y_prev is not None and change is not None:
            self.k = mean_abs(y_sub - self.y_prev) / change
        self.x_prev, self.y_prev = x_sub.clone(), y_sub.clone()
        self.norm = mean_abs(y)


@dataclass
class _CacheState:
    rule: _Rule
    #: the window on the timestep axis: measured at t <= high, past the end at t <= low
    high: float = math.inf
    low: float = -math.inf
    #: the cached transformation ``y − x`` and any extra output channels
    diff: torch.Tensor | None = None
    extra: torch.Tensor | None = None
    #: EasyCache: the first step inside the window was seen (measuring has started)
    started: bool = False
    metadata: tuple[Any, ...] | None = None
    skipped: int = 0
    computed: int = 0
    disabled: bool = False
    #: the step of the last main UNet pass and how many passes it made
    step: Step | None = None
    passes: int = 0
    #: LazyCache with CFG++: the last computed step's unconditional x̂₀
    uncond_x0: torch.Tensor | None = None
    #: verbose: the measured and estimated output change rates
    rates: list[float] = field(default_factory=list)


class _StepCache(SamplerExtension):
    """The shared configuration, window and per-run state of both caches."""

    NAME = "StepCache"
    priority = 2000  # outermost: a skipped step runs nothing inside it

    def __init__(self, reuse_threshold: float = 0.2, start_percent: float = 0.15,
                 end_percent: float = 0.95, verbose: bool = False,
                 subsample_factor: int = SUBSAMPLE_FACTOR):
        for name, value in (("reuse_threshold", reuse_threshold),
                            ("start_percent", start_percent), ("end_percent", end_percent)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{self.NAME}'s {name} must be a number >= 0, not {value}")
        if not 1 <= int(subsample_factor) <= 64:
            raise ValueError(f"{self.NAME}'s subsample_factor must be 1-64")
        self.reuse_threshold = float(reuse_threshold)
        self.start_percent = float(start_percent)
        self.end_percent = float(end_percent)
        self.verbose = bool(verbose)
        self.subsample_factor = int(subsample_factor)

    def setup(self, run: SamplingRun) -> None:
        n = int(run.scheduler.config.get("num_train_timesteps", 1000))
        run.state[self] = _CacheState(_Rule(self.reuse_threshold),
                                      high=percent_timestep(self.start_percent, n),
                                      low=percent_timestep(self.end_percent, n))
        logger.info("%s enabled - threshold: %s, start_percent: %s, end_percent: %s",
                    self.NAME, self.reuse_threshold, self.start_percent, self.end_percent)

    def teardown(self, run: SamplingRun) -> None:
        state: _CacheState | None = run.state.pop(self, None)
        if state is None:
            return
        total = len(run.timesteps)
        speedup = total / (total - state.skipped) if total > state.skipped else 1.0
        logger.info("%s - skipped %d/%d steps (%.2fx speedup).", self.NAME, state.skipped,
                    total, speedup)
        if self.verbose:
            logger.info("%s [verbose] - change rates: %s", self.NAME, state.rates)

    # --- shared pieces -----------------------------------------------------------------------

    def _sub(self, x: torch.Tensor) -> torch.Tensor:
        return subsample(x, self.subsample_factor)

    def _check_metadata(self, state: _CacheState, x: torch.Tensor, shape: tuple[int, ...]
                        ) -> None:
        """Start over when the latent's shape, dtype or device changes in a run."""
        metadata = (x.device, x.dtype, shape)
        if state.metadata is None:
            state.metadata = metadata
        elif metadata != state.metadata:
            logger.warning("%s - tensor shape, dtype or device changed, resetting state",
                           self.NAME)
            state.rule = _Rule(self.reuse_threshold)
            state.diff = state.extra = state.uncond_x0 = None
            state.started, state.metadata = False, metadata

    def _count_pass(self, state: _CacheState, step: Step) -> bool:
        """Count a main UNet pass; False (and the cache off) on a second one in a step."""
        if state.step is step:
            state.passes += 1
            if not state.disabled:
                state.disabled = True
                logger.warning("%s: the UNet runs more than once per step here (e.g. "
                               "MultiDiffusion's windows); caching is off for this run",
                               self.NAME)
            return False
        state.step, state.passes = step, 1
        return not state.disabled

    def _log(self, state: _CacheState, skipped: bool) -> None:
        if self.verbose:
            logger.info("%s [verbose] - %s step; accumulated change rate: %s, "
                        "reuse_threshold: %s", self.NAME,
                        "skipping" if skipped else "NOT skipping",
                        float(state.rule.accumulated), self.reuse_threshold)

    def _reused(self, state: _CacheState, x: torch.Tensor) -> torch.Tensor:
        assert state.diff is not None
        out = x + state.diff.to(x.device, x.dtype)
        if state.extra is not None:
            out = torch.cat([out, state.extra.to(x.device, x.dtype)], 1)
        return out

    def _remember(self, state: _CacheState, x: torch.Tensor, y: torch.Tensor,
                  output: torch.Tensor) -> None:
        state.diff = y - x
        channels = x.shape[1]
        state.extra = output[:, channels:] if output.shape[1] > channels else None
        state.computed += 1


class EasyCache(_StepCache):
    """EasyCache: reuse the UNet's cached transformation while the input changes slowly."""

    NAME = "EasyCache"

    def unet_forward(self, run: SamplingRun, step: Step, call: UNetCall,
                     forward: UNetForward) -> torch.Tensor:
        state: _CacheState | None = run.state.get(self)
        if state is None or not self._count_pass(state, step):
            return forward(call)
        t = float(step.timestep)
        if t <= state.low:  # past end_percent: the model runs, nothing is measured
            return forward(call)
        channels = call.latent_input.shape[1]
        x = call.sample[:, :channels]
        rows = max(x.shape[0] // max(len(run.roles), 1), 1)  # the first role's rows
        change = None
        if t <= state.high:
            self._check_metadata(state, x, tuple(x.shape[1:]))
            can_reuse = state.diff is not None and state.diff.shape == x.shape
            state.started = True
            skip, change = state.rule.skip(self._sub(x[:rows]), can_reuse)
            self._log(state, skip)
            if skip:
                state.skipped += 1
                return self._reused(state, x)
        output = forward(call)
        y = output[:, :channels]
        if state.started:
            self._learn(state, x[:rows], y[:rows], y, change)
        self._remember(state, x, y, output)
        return output

    def _learn(self, state: _CacheState, x: torch.Tensor, y_rows: torch.Tensor,
               y: torch.Tensor, change: torch.Tensor | None) -> None:
        rule = state.rule
        if self.verbose and rule.norm is not None and rule.y_prev is not None:
            state.rates.append(float(mean_abs(self._sub(y_rows) - rule.y_prev) / rule.norm))
        rule.learn(self._sub(x), self._sub(y_rows), y, change)


class LazyCache(_StepCache):
    """LazyCache: reuse the whole step's cached transformation (the guided x̂₀)."""

    NAME = "LazyCache"

    def unet_forward(self, run: SamplingRun, step: Step, call: UNetCall,
                     forward: UNetForward) -> torch.Tensor:
        state: _CacheState | None = run.state.get(self)
        if state is not None:
            self._count_pass(state, step)
        return forward(call)

    def denoise(self, run: SamplingRun, denoise: Denoise) -> Denoise:
        return partial(self._step, denoise)

    def _step(self, inner: Denoise, run: SamplingRun, step: Step,
              latents: torch.Tensor) -> torch.Tensor:
        state: _CacheState | None = run.state.get(self)
        t = float(step.timestep)
        if state is None or state.disabled or t <= state.low:
            return inner(run, step, latents)
        space = _sigma_space(run, step, latents)
        if space is None:
            state.disabled = True
            logger.warning("%s: this sampler has no noise schedule to measure with; "
                           "caching is off for this run", self.NAME)
            return inner(run, step, latents)
        a, b, x_vp, x = space
        change = None
        if t <= state.high:
            self._check_metadata(state, x, tuple(x.shape))
        if t <= state.high and state.rule.x_prev is not None:
            can_reuse = state.diff is not None and bool(b.abs() > 1e-12)
            skip, change = state.rule.skip(self._sub(x), can_reuse)
            self._log(state, skip)
            if skip:
                state.skipped += 1
                return self._skipped_step(run, state, step, latents, a, b, x_vp, x)
        out = inner(run, step, latents)
        prediction = step.prediction
        if state.disabled or prediction is None or prediction.shape[0] != x.shape[0]:
            return out
        channels = x.shape[1]
        y = a * x_vp + b * prediction[:, :channels]
        if self.verbose and state.rule.norm is not None and state.rule.y_prev is not None:
            state.rates.append(float(mean_abs(self._sub(y) - state.rule.y_prev)
                                     / state.rule.norm))
        state.rule.learn(self._sub(x), self._sub(y), y, change)
        self._remember(state, x, y, prediction)
        uncond = step.scheduler_kwargs.get("uncond_output")
        state.uncond_x0 = (None if uncond is None
                           else a * x_vp + b * uncond[:, :channels])
        return out

    def _skipped_step(self, run: SamplingRun, state: _CacheState, step: Step,
                      latents: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                      x_vp: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The step from the reused x̂₀: back to the sampler's prediction, then the
        scheduler's step, as the sampler's own step would take it."""
        from nodes.diffusion.sampling import step_kwargs

        denoised = self._reused(state, x)
        channels = x.shape[1]
        prediction = (denoised[:, :channels] - a * x_vp) / b
        if denoised.shape[1] > channels:
            prediction = torch.cat([prediction, denoised[:, channels:]], 1)
        step.prediction, step.model_input = prediction, x_vp
        kwargs = {**step_kwargs(run.scheduler, run.generator, run.params.eta),
                  **step.scheduler_kwargs}
        if state.uncond_x0 is not None and getattr(run.scheduler, "cfg_pp", False):
            kwargs["uncond_output"] = (state.uncond_x0 - a * x_vp) / b
        return run.scheduler.step(prediction, step.timestep, latents, **kwargs,
                                  return_dict=False)[0]


def _sigma_space(run: SamplingRun, step: Step, latents: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(a, b, x_vp, x)``: x̂₀ = a·x_vp + b·prediction for the UNet's (VP-space) input
    x_vp of this step, and the noisy latent in σ space, x = x_vp / √ᾱ (ComfyUI's ``x``);
    None for a stand-in scheduler without a noise schedule."""
    from nodes.diffusion.denoised import alpha_bar_at, step_scale, x0_coefficients

    scheduler = run.scheduler
    try:
        scale = step_scale(scheduler, step.timestep, latents)
        if float(scale) >= 1.0 and getattr(scheduler, "alphas_cumprod", None) is None:
            return None
        alpha_bar = alpha_bar_at(scheduler, step.timestep, scale, latents)
        a, b = x0_coefficients(scheduler, step.timestep, scale, latents)
    except (AttributeError, ValueError, IndexError, TypeError):
        return None
    x_vp = latents * scale.to(latents.device, latents.dtype)
    return a, b, x_vp, x_vp / alpha_bar.sqrt()
