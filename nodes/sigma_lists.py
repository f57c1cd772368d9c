"""ComfyUI's explicit-σ schedulers for SamplerCustom: Karras, exponential,
polyexponential, Laplace, VP, Beta and Align Your Steps noise levels as a SIGMAS value,
and the nodes that edit a schedule's σs (SetFirstSigma, ExtendIntermediateSigmas).

Each gives a σ list (``steps + 1`` levels, the last 0) that the samplers running custom
σs (Euler's family: euler, the CFG++, iPNDM, RES and gradient-estimation samplers; and
dpmpp_2m, dpmpp_2m_sde(_heun) and euler_ancestral through their σ-space twins) run
exactly; another sampler is an error that names them. As in ComfyUI they take no
model: the sampler runs the list on its own model's noise schedule, and a list that
starts below that model's σ_max noises the input latent to its first level (img2img).
"""

from __future__ import annotations

import math

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import DiffusionModel
from nodes.diffusion.sigma_schedules import SigmaSchedule

#: Align Your Steps' 10-step noise levels (Sabour et al. 2024), without the final 0
AYS_NOISE_LEVELS = {
    "SD1": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "SDXL": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
}
SIGMA_MAX = 5000.0  # ComfyUI's bound on the σ inputs


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0
                  ) -> list[float]:
    """Karras et al. 2022: σ evenly spaced in σ^(1/ρ), then 0."""
    top, bottom = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    ramp = [i / (steps - 1) if steps > 1 else 0.0 for i in range(steps)]
    return [(top + r * (bottom - top)) ** rho for r in ramp] + [0.0]


def polyexponential_sigmas(steps: int, sigma_min: float, sigma_max: float,
                           rho: float = 1.0) -> list[float]:
    """log σ falls from log σ_max to log σ_min along ``(1 − i/(n−1))^ρ`` (ρ = 1:
    exponential, evenly spaced in log σ), then 0."""
    low, high = math.log(sigma_min), math.log(sigma_max)
    ramp = [(1 - i / (steps - 1)) ** rho if steps > 1 else 1.0 for i in range(steps)]
    return [math.exp(low + r * (high - low)) for r in ramp] + [0.0]


def laplace_sigmas(steps: int, sigma_min: float, sigma_max: float, mu: float = 0.0,
                   beta: float = 0.5) -> list[float]:
    """Tian et al.'s Laplace schedule: log σ at the quantiles of a Laplace(μ, β)
    distribution, evenly spaced in probability (steps gather around σ = e^μ), clamped
    to [σ_min, σ_max], then 0."""
    out = []
    for i in range(steps):
        x = i / (steps - 1) if steps > 1 else 0.0
        x = min(max(x, 1e-7), 1 - 1e-7)  # the quantile is infinite at 0 and 1
        quantile = mu - beta * math.copysign(1.0, 0.5 - x) * math.log(1 - 2 * abs(0.5 - x))
        out.append(min(max(math.exp(quantile), sigma_min), sigma_max))
    return [*out, 0.0]


def vp_sigmas(steps: int, beta_d: float = 19.9, beta_min: float = 0.1,
              eps_s: float = 1e-3) -> list[float]:
    """The continuous VP-SDE's noise levels (Song et al. 2021) at t evenly spaced from
    1 to ``eps_s``: ``σ(t) = √(exp(β_d t²/2 + β_min t) − 1)``, then 0."""
    ts = [1 - (1 - eps_s) * i / (steps - 1) if steps > 1 else 1.0 for i in range(steps)]
    return [math.sqrt(math.expm1(beta_d * t * t / 2 + beta_min * t)) for t in ts] + [0.0]


def loglinear_interp(levels: tuple[float, ...], count: int) -> list[float]:
    """``count`` levels interpolated linearly in log σ between ``levels`` (decreasing),
    at evenly spaced positions: AYS's way to other step counts."""
    logs = [math.log(v) for v in levels]
    out = []
    for i in range(count):
        x = i * (len(levels) - 1) / (count - 1) if count > 1 else 0.0
        k = min(int(x), len(levels) - 2)
        out.append(math.exp(logs[k] + (x - k) * (logs[k + 1] - logs[k])))
    return out


def _schedule(sigmas: list[float], start: int = 0) -> SigmaSchedule:
    return SigmaSchedule({}, "normal", len(sigmas) - 1, start=start, sigma_list=tuple(sigmas))


class _SigmaRange(Node):
    """A σ list from ``steps`` and a range [σ_min, σ_max] (ComfyUI's inputs and bounds;
    the defaults are SD 1.x's range); subclasses give the spacing in :meth:`levels`."""

    CATEGORY = "sampling/custom_sampling/schedulers"
    OUTPUTS = (Output("SIGMAS"),)

    steps: int = Input(20, min=1, max=10000)
    sigma_max: float = Input(14.614642, min=0.0, max=SIGMA_MAX, step=0.01)
    sigma_min: float = Input(0.0291675, min=0.0, max=SIGMA_MAX, step=0.01)

    def levels(self) -> list[float]:
        raise NotImplementedError

    def execute(self, ctx: ExecutionContext) -> tuple[SigmaSchedule]:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be above 0 and below "
                             f"sigma_max ({self.sigma_max})")
        for name in ("rho", "beta"):
            if getattr(self, name, 1.0) <= 0:
                raise ValueError(f"{name} must be above 0")
        return (_schedule(self.levels()),)


class KarrasScheduler(_SigmaRange):
    """Karras et al.'s σ spacing with your own σ_max, σ_min and ρ (7 packs steps near
    σ_min)."""

    TYPE = "KarrasScheduler"
    DISPLAY_NAME = "KarrasScheduler"

    rho: float = Input(7.0, min=0.0, max=100.0, step=0.01)

    def levels(self) -> list[float]:
        return karras_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho)


class ExponentialScheduler(_SigmaRange):
    """σ evenly spaced in log σ from σ_max to σ_min."""

    TYPE = "ExponentialScheduler"
    DISPLAY_NAME = "ExponentialScheduler"

    def levels(self) -> list[float]:
        return polyexponential_sigmas(self.steps, self.sigma_min, self.sigma_max)


class PolyexponentialScheduler(_SigmaRange):
    """log σ along ``(1 − i/(n−1))^ρ``: ρ > 1 spends more steps at high noise."""

    TYPE = "PolyexponentialScheduler"
    DISPLAY_NAME = "PolyexponentialScheduler"

    rho: float = Input(1.0, min=0.0, max=100.0, step=0.01)

    def levels(self) -> list[float]:
        return polyexponential_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho)


class AlignYourStepsScheduler(Node):
    """Align Your Steps (Sabour et al. 2024): noise levels optimised for SD 1.x or SDXL,
    10 published steps (the 11th level, σ_min, becomes the final 0), log-linearly
    interpolated to other counts (10 is the tuned one;
    they suit euler and the σ-space samplers at 10-20 steps). ``denoise`` < 1 keeps the
    last ``round(steps * denoise)`` of them (img2img)."""

    TYPE = "AlignYourStepsScheduler"
    DISPLAY_NAME = "AlignYourStepsScheduler"
    CATEGORY = "sampling/custom_sampling/schedulers"
    OUTPUTS = (Output("SIGMAS"),)

    model_type: str = Input("SD1", choices=tuple(AYS_NOISE_LEVELS))
    steps: int = Input(10, min=1, max=10000)
    denoise: float = Input(1.0, min=0.0, max=1.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[SigmaSchedule]:
        # steps + 1 levels ending at the table's σ_min, which the last step replaces by 0
        sigmas = loglinear_interp(AYS_NOISE_LEVELS[self.model_type], self.steps + 1)
        sigmas[-1] = 0.0
        keep = round(self.steps * self.denoise)
        return (_schedule(sigmas, start=self.steps - keep),)


class LaplaceScheduler(_SigmaRange):
    """Laplace noise levels (Tian et al. 2024): steps gathered around σ = e^mu, more so
    for a small ``beta``, within [σ_min, σ_max]."""

    TYPE = "LaplaceScheduler"
    DISPLAY_NAME = "LaplaceScheduler"

    mu: float = Input(0.0, min=-10.0, max=10.0, step=0.1)
    beta: float = Input(0.5, min=0.0, max=10.0, step=0.1)

    def levels(self) -> list[float]:
        return laplace_sigmas(self.steps, self.sigma_min, self.sigma_max, self.mu, self.beta)


class VPScheduler(Node):
    """The continuous VP-SDE's noise levels (``beta_d``, ``beta_min``, down to time
    ``eps_s``); the defaults start at σ ≈ 152, far above SD's 14.6."""

    TYPE = "VPScheduler"
    DISPLAY_NAME = "VPScheduler"
    CATEGORY = "sampling/custom_sampling/schedulers"
    OUTPUTS = (Output("SIGMAS"),)

    steps: int = Input(20, min=1, max=10000)
    beta_d: float = Input(19.9, min=0.0, max=SIGMA_MAX, step=0.01)
    beta_min: float = Input(0.1, min=0.0, max=SIGMA_MAX, step=0.01)
    eps_s: float = Input(0.001, min=0.0, max=1.0, step=0.0001)

    def execute(self, ctx: ExecutionContext) -> tuple[SigmaSchedule]:
        if self.beta_d + self.beta_min <= 0 or self.eps_s <= 0:
            raise ValueError("beta_d + beta_min and eps_s must be above 0 (σ would be 0)")
        if self.beta_d / 2 + self.beta_min > 700:
            raise ValueError("beta_d / 2 + beta_min above 700 overflows σ")
        return (_schedule(vp_sigmas(self.steps, self.beta_d, self.beta_min, self.eps_s)),)


def _as_list(value: object) -> SigmaSchedule:
    if not isinstance(value, SigmaSchedule):
        raise ValueError(f"sigmas must come from a schedule node, not {type(value).__name__}")
    return value.explicit()


class SetFirstSigma(Node):
    """Replace the schedule's first noise level (of its window), e.g. to start above the
    model's σ_max; the schedule becomes an explicit σ list (Euler's family and the DPM++
    2M twins run it)."""

    TYPE = "SetFirstSigma"
    DISPLAY_NAME = "SetFirstSigma"
    CATEGORY = "sampling/custom_sampling/sigmas"
    OUTPUTS = (Output("SIGMAS"),)

    sigmas: SigmaSchedule = Input(type="SIGMAS")
    sigma: float = Input(136.0, min=0.0, max=20000.0, step=0.001)

    def execute(self, ctx: ExecutionContext) -> tuple[SigmaSchedule]:
        from dataclasses import replace

        schedule = _as_list(self.sigmas)
        if len(schedule) == 0:
            return (schedule,)
        levels = list(schedule.sigma_list or ())
        if self.sigma <= levels[schedule.start + 1]:
            raise ValueError(f"sigma {self.sigma:g} must be above the next level "
                             f"({levels[schedule.start + 1]:g})")
        levels[schedule.start] = float(self.sigma)
        return (replace(schedule, sigma_list=tuple(levels)),)


SPACINGS = {"linear": lambda x: x, "cosine": lambda x: math.sin(x * math.pi / 2),
            "sine": lambda x: 1 - math.cos(x * math.pi / 2)}


class ExtendIntermediateSigmas(Node):
    """Split each step whose noise level lies in [end_at_sigma, start_at_sigma] (-1: no
    upper bound) into ``steps`` smaller ones, placed along ``spacing``; more steps where
    they matter, the rest of the schedule as it was. The schedule becomes an explicit σ
    list (Euler's family and the DPM++ 2M twins run it)."""

    TYPE = "ExtendIntermediateSigmas"
    DISPLAY_NAME = "ExtendIntermediateSigmas"
    CATEGORY = "sampling/custom_sampling/sigmas"
    OUTPUTS = (Output("SIGMAS"),)

    sigmas: SigmaSchedule = Input(type="SIGMAS")
    steps: int = Input(2, min=1, max=100)
    start_at_sigma: float = Input(-1.0, min=-1.0, max=20000.0, step=0.01)
    end_at_sigma: float = Input(12.0, min=0.0, max=20000.0, step=0.01)
    spacing: str = Input("linear", choices=tuple(SPACINGS))

    def execute(self, ctx: ExecutionContext) -> tuple[SigmaSchedule]:
        from dataclasses import replace

        schedule = _as_list(self.sigmas)
        levels = list(schedule.sigma_list or ())
        top = math.inf if self.start_at_sigma < 0 else self.start_at_sigma
        shape = SPACINGS[self.spacing]
        between = [shape(k / self.steps) for k in range(1, self.steps)]
        out, index = [], []  # index[i]: where level i lands in the new list
        for i, level in enumerate(levels):
            index.append(len(out))
            out.append(level)
            if i + 1 < len(levels) and self.end_at_sigma <= level <= top:
                out.extend(level + f * (levels[i + 1] - level) for f in between)
        if len(out) - 1 > 10000:
            raise ValueError(f"the extended schedule has {len(out) - 1} steps, more than "
                             f"10000: extend fewer steps")
        end = None if schedule.end is None else index[min(schedule.end, len(levels) - 1)]
        return (replace(schedule, sigma_list=tuple(out), steps=len(out) - 1,
                        start=index[min(schedule.start, len(levels) - 1)], end=end),)


MAX_MANUAL_TEXT = 100_000  # characters of a typed schedule


class ManualSigmas(Node):
    """A schedule typed by hand: noise levels separated by commas (or any non-numbers),
    highest first, usually ending with 0, e.g. "14.61, 6.48, 3.86, 1.89, 0.96, 0.40,
    0.03, 0" for SD (its σ_max is 14.61). A list that stops above 0 leaves that much noise
    (feed the rest to another sampler); one that starts below σ_max noises the input
    latent to its first level (img2img). Runs with Euler's family and the DPM++ 2M twins,
    like every explicit σ list. Typed rising ("0.03, 1, 14.6") it is for FlipSigmas; the
    sampler refuses a 0 before the end or two equal neighbours. ComfyUI's node."""

    TYPE = "ManualSigmas"
    DISPLAY_NAME = "ManualSigmas"
    CATEGORY = "sampling/custom_sampling/sigmas"
    OUTPUTS = (Output("SIGMAS"),)

    sigmas: str = Input("1, 0.5")

    def execute(self, ctx: ExecutionContext) -> tuple[SigmaSchedule]:
        import re

        if len(self.sigmas) > MAX_MANUAL_TEXT:
            raise ValueError(f"sigmas is {len(self.sigmas)} characters long, more than "
                             f"{MAX_MANUAL_TEXT}")
        levels = [float(v) for v in re.findall(r"[-+]?(?:\d*\.\d+|\d+\.?)(?:[eE][-+]?\d+)?",
                                               self.sigmas)]
        if not levels:
            raise ValueError(f"sigmas holds no number: {self.sigmas[:80]!r}")
        if len(levels) - 1 > 10000:
            raise ValueError(f"sigmas has {len(levels) - 1} steps, more than 10000")
        bad = [v for v in levels if not 0.0 <= v <= SIGMA_MAX]
        if bad:
            raise ValueError(f"noise levels must lie in 0..{SIGMA_MAX:g}; got {bad[0]:g}")
        # as ComfyUI, any list of levels: a rising one is for FlipSigmas, one level is an
        # empty schedule; what no sampler can step through is refused where it samples
        return (_schedule(levels),)


class FlipSigmas(Node):
    """The schedule reversed, lowest noise first (a first level of 0 becomes 0.0001).
    Sampled with Euler at cfg 1 and Disable Noise, it *unsamples*: the image's latent is
    carried up to noise by the model's own predictions, and sampling that noise back
    down (again without added noise) rebuilds the image, a prompt change steering the
    edit. ComfyUI's node."""

    TYPE = "FlipSigmas"
    DISPLAY_NAME = "FlipSigmas"
    CATEGORY = "sampling/custom_sampling/sigmas"
    OUTPUTS = (Output("SIGMAS"),)

    sigmas: SigmaSchedule = Input(type="SIGMAS")

    def execute(self, ctx: ExecutionContext) -> tuple[SigmaSchedule]:
        from dataclasses import replace

        schedule = _as_list(self.sigmas)
        if len(schedule) == 0:
            return (schedule,)
        levels = list((schedule.sigma_list or ())[schedule.start:schedule.stop + 1])[::-1]
        if levels[0] == 0:
            levels[0] = 0.0001
        return (replace(schedule, sigma_list=tuple(levels), steps=len(levels) - 1, start=0,
                        end=None),)


def _model_sigmas(model: DiffusionModel) -> list[float]:
    """The model's σ at each training timestep, lowest first."""
    from nodes.diffusion.schedulers import make_scheduler, training_sigmas

    return training_sigmas(make_scheduler("euler", "normal", dict(model.scheduler_config)))


def beta_sigmas(model_sigmas: list[float], steps: int, alpha: float, beta: float
                ) -> list[float]:
    """Lee et al. 2024 ("Beta Sampling is All You Need"): training timesteps at the
    Beta(α, β) quantiles of 1 − i/steps (rounded; repeats dropped), their σs, then 0.
    α = β = 0.6 spends more steps at both ends of the schedule."""
    from scipy.stats import beta as beta_distribution

    last = len(model_sigmas) - 1
    out: list[float] = []
    previous = None
    for i in range(steps):
        t = round(float(beta_distribution.ppf(1 - i / steps, alpha, beta)) * last)
        if t != previous:
            out.append(model_sigmas[t])
            previous = t
    return [*out, 0.0]


class BetaSamplingScheduler(Node):
    """Beta sampling (Lee et al. 2024): the model's own noise levels at the quantiles of
    a Beta(alpha, beta) distribution; 0.6 / 0.6 puts more steps at the start (layout) and
    the end (detail) than in the middle. Repeated timesteps are dropped, so a schedule
    can have fewer steps than asked."""

    TYPE = "BetaSamplingScheduler"
    DISPLAY_NAME = "BetaSamplingScheduler"
    CATEGORY = "sampling/custom_sampling/schedulers"
    OUTPUTS = (Output("SIGMAS"),)

    model: DiffusionModel = Input(type="MODEL")
    steps: int = Input(20, min=1, max=10000)
    alpha: float = Input(0.6, min=0.0, max=50.0, step=0.01)
    beta: float = Input(0.6, min=0.0, max=50.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[SigmaSchedule]:
        if self.alpha <= 0 or self.beta <= 0:
            raise ValueError("alpha and beta must be above 0")
        sigmas = beta_sigmas(_model_sigmas(self.model), self.steps, self.alpha, self.beta)
        return (_schedule(sigmas),)


class SamplingPercentToSigma(Node):
    """The noise level at a fraction of the model's schedule (0: the start, 1: the end),
    as ComfyUI's timestep ranges read it: 0 gives a huge σ and 1 gives 0 (every level
    is inside or outside), unless ``return_actual_sigma`` asks for σ_max / σ_min there.
    Feed it to ExtendIntermediateSigmas' bounds."""

    TYPE = "SamplingPercentToSigma"
    DISPLAY_NAME = "SamplingPercentToSigma"
    CATEGORY = "sampling/custom_sampling/sigmas"
    OUTPUTS = (Output("FLOAT", "sigma_value"),)

    model: DiffusionModel = Input(type="MODEL")
    sampling_percent: float = Input(0.0, min=0.0, max=1.0, step=0.0001)
    return_actual_sigma: bool = Input(False)

    def execute(self, ctx: ExecutionContext) -> tuple[float]:
        import numpy as np

        log_sigmas = np.log(np.asarray(_model_sigmas(self.model)))
        if self.sampling_percent <= 0:
            return (float(np.exp(log_sigmas[-1])) if self.return_actual_sigma
                    else 999999999.9,)
        if self.sampling_percent >= 1:
            return (float(np.exp(log_sigmas[0])) if self.return_actual_sigma else 0.0,)
        t = (1 - self.sampling_percent) * (len(log_sigmas) - 1)
        return (float(np.exp(np.interp(t, np.arange(len(log_sigmas)), log_sigmas))),)


NODE_CLASSES = (KarrasScheduler, ExponentialScheduler, PolyexponentialScheduler,
                LaplaceScheduler, VPScheduler, AlignYourStepsScheduler, SetFirstSigma,
                ExtendIntermediateSigmas, SamplingPercentToSigma, BetaSamplingScheduler,
                ManualSigmas, FlipSigmas)
