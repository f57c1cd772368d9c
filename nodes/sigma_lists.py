"""ComfyUI's explicit-σ schedulers for SamplerCustom: Karras, exponential,
polyexponential and Align Your Steps noise levels as a SIGMAS value.

Each gives a σ list (``steps + 1`` levels, the last 0) that the samplers running custom
σs (Euler's family: euler, the CFG++, iPNDM, RES and gradient-estimation samplers) run
exactly; another sampler is an error that names them. As in ComfyUI they take no
model: the sampler runs the list on its own model's noise schedule, and a list that
starts below that model's σ_max noises the input latent to its first level (img2img).
"""

from __future__ import annotations

import math

from engine import ExecutionContext, Input, Node, Output
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


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"sigma_min ({sigma_min}) must be above 0 and below sigma_max "
                         f"({sigma_max})")


def _schedule(sigmas: list[float], start: int = 0) -> SigmaSchedule:
    return SigmaSchedule({}, "normal", len(sigmas) - 1, start=start, sigma_list=tuple(sigmas))


class KarrasScheduler(Node):
    """Karras et al.'s σ spacing with your own σ_max, σ_min and ρ (7 packs steps near
    σ_min; the defaults are SD 1.x's range)."""

    TYPE = "KarrasScheduler"
    DISPLAY_NAME = "KarrasScheduler"
    CATEGORY = "sampling/custom_sampling/schedulers"
    OUTPUTS = (Output("SIGMAS"),)

    steps: int = Input(20, min=1, max=10000)
    sigma_max: float = Input(14.614642, min=0.0, max=SIGMA_MAX, step=0.01)
    sigma_min: float = Input(0.0291675, min=0.0, max=SIGMA_MAX, step=0.01)
    rho: float = Input(7.0, min=0.0, max=100.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[SigmaSchedule]:
        _check_range(self.sigma_min, self.sigma_max)
        if self.rho <= 0:
            raise ValueError("rho must be above 0")
        return (_schedule(karras_sigmas(self.steps, self.sigma_min, self.sigma_max,
                                        self.rho)),)


class ExponentialScheduler(Node):
    """σ evenly spaced in log σ from σ_max to σ_min."""

    TYPE = "ExponentialScheduler"
    DISPLAY_NAME = "ExponentialScheduler"
    CATEGORY = "sampling/custom_sampling/schedulers"
    OUTPUTS = (Output("SIGMAS"),)

    steps: int = Input(20, min=1, max=10000)
    sigma_max: float = Input(14.614642, min=0.0, max=SIGMA_MAX, step=0.01)
    sigma_min: float = Input(0.0291675, min=0.0, max=SIGMA_MAX, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[SigmaSchedule]:
        _check_range(self.sigma_min, self.sigma_max)
        return (_schedule(polyexponential_sigmas(self.steps, self.sigma_min,
                                                 self.sigma_max)),)


class PolyexponentialScheduler(Node):
    """log σ along ``(1 − i/(n−1))^ρ``: ρ > 1 spends more steps at high noise."""

    TYPE = "PolyexponentialScheduler"
    DISPLAY_NAME = "PolyexponentialScheduler"
    CATEGORY = "sampling/custom_sampling/schedulers"
    OUTPUTS = (Output("SIGMAS"),)

    steps: int = Input(20, min=1, max=10000)
    sigma_max: float = Input(14.614642, min=0.0, max=SIGMA_MAX, step=0.01)
    sigma_min: float = Input(0.0291675, min=0.0, max=SIGMA_MAX, step=0.01)
    rho: float = Input(1.0, min=0.0, max=100.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[SigmaSchedule]:
        _check_range(self.sigma_min, self.sigma_max)
        if self.rho <= 0:
            raise ValueError("rho must be above 0")
        return (_schedule(polyexponential_sigmas(
            self.steps, self.sigma_min, self.sigma_max, self.rho)),)


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


NODE_CLASSES = (KarrasScheduler, ExponentialScheduler, PolyexponentialScheduler,
                AlignYourStepsScheduler)
