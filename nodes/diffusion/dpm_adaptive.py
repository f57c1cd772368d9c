"""``dpm_adaptive``: DPM-Solver-12 / 23 with an adaptive step size (Lu et al. 2022, "DPM-Solver:
A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps", §4.4;
k-diffusion's ``sample_dpm_adaptive``), for ComfyUI's SamplerDPMAdaptative.

In ``t = λ = −log σ`` with the noise estimate ``ε = (x − D(x, σ))/σ``, each attempted step
from s to t (``h = t − s``) computes a low- and a high-order solution sharing their model
calls: order 3 pairs DPM-Solver-2 (r₁ = 1/3) with DPM-Solver-3 (r₁ = 1/3, r₂ = 2/3, three
calls), order 2 DPM-Solver-1 with DPM-Solver-2 (r₁ = 1/2, two calls). Their difference,
scaled by ``δ = max(atol, rtol·max(|x_low|, |x_prev|))`` (x_prev: the last accepted
low-order solution), gives the error ``E = ‖(x_low − x_high)/δ‖₂ / √numel``; a PID
controller on 1/E (coefficients divided by the order, 1.5 with eta) proposes the next h
through the limiter ``1 + atan(f − 1)`` and accepts the step when that factor is at least
``accept_safety``. With eta > 0 an accepted step goes to the ancestral σ_down and adds
fresh noise up to σ_t (``s_noise`` times it).

The sampling loop runs it through :mod:`nodes.diffusion.adaptive_sampler`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nodes.diffusion.sigma_samplers import ancestral_sigmas

#: the most model calls one run may make (ComfyUI sets none: a tight rtol / atol, or a
#: model whose error never falls under them, would sample forever)
MAX_MODEL_CALLS = 1000

#: ``denoise(x, σ) -> D(x, σ)``, the model's clean-latent estimate
Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class AdaptiveOptions:
    """SamplerDPMAdaptative's inputs."""

    order: int = 3
    rtol: float = 0.05
    atol: float = 0.0078
    h_init: float = 0.05
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    accept_safety: float = 0.81
    eta: float = 0.0
    s_noise: float = 1.0

    def check(self) -> None:
        if self.order not in (2, 3):
            raise ValueError(f"dpm_adaptive: order must be 2 or 3, not {self.order}")
        if not self.h_init > 0:
            raise ValueError("dpm_adaptive: h_init must be above 0 (the first step's size in "
                             "log σ; 0 never moves)")
        if self.rtol <= 0 and self.atol <= 0:
            raise ValueError("dpm_adaptive: rtol and atol are both 0, so no step can meet "
                             "them: raise either (defaults 0.05 and 0.0078)")
        values = (self.rtol, self.atol, self.pcoeff, self.icoeff, self.dcoeff,
                  self.accept_safety, self.eta, self.s_noise)
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise ValueError("dpm_adaptive: rtol, atol, the PID coefficients, accept_safety, "
                             "eta and s_noise must be finite and at least 0")


class PIDController:
    """The step-size controller: ``h ← h·L(∏ (1/E_k)^{b_k})`` over the last three errors,
    ``b = ((p + i + d), −(p + 2d), d) / order``, ``L(f) = 1 + atan(f − 1)``; a step is
    accepted when that factor is at least ``accept_safety`` (the error history moves on
    only then)."""

    def __init__(self, h: float, options: AdaptiveOptions, order: float, eps: float = 1e-8):
        p, i, d = options.pcoeff, options.icoeff, options.dcoeff
        self.h = h
        self.powers = ((p + i + d) / order, -(p + 2 * d) / order, d / order)
        self.accept_safety = options.accept_safety
        self.eps = eps
        self.inverse_errors: list[float] = []

    def propose(self, error: float) -> bool:
        if not math.isfinite(error):
            raise ValueError("dpm_adaptive: a step's error estimate is not finite (the model "
                             "predicted NaN or inf, or atol is 0 where the latent is 0): "
                             "raise atol, or check the model")
        inverse = 1.0 / (error + self.eps)
        if not self.inverse_errors:
            self.inverse_errors = [inverse] * 3
        self.inverse_errors[0] = inverse
        # ∏ value^power in logs: large PID gains would overflow the product
        log_factor = sum(power * math.log(value) for value, power
                         in zip(self.inverse_errors, self.powers, strict=True) if power)
        factor = 1.0 + math.atan(math.exp(min(log_factor, 700.0)) - 1.0)
        accepted = factor >= self.accept_safety
        if accepted:
            self.inverse_errors[1:] = self.inverse_errors[:2]
        self.h *= factor
        return accepted


def _sigma(t: float) -> float:
    return math.exp(-t)


def working(x: torch.Tensor) -> torch.Tensor:
    """The solver's copy of a latent: float32 at least (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class AdaptiveSolver:
    """The adaptive DPM-Solver from ``σ_max`` to ``σ_min``, one attempted step per
    :meth:`attempt`; ``denoise`` is the model, ``noise(like)`` fresh noise (eta > 0)."""

    def __init__(self, x: torch.Tensor, sigma_max: float, sigma_min: float,
                 options: AdaptiveOptions, denoise: Denoiser,
                 noise: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 max_calls: int | None = None):
        options.check()
        if not (sigma_max > 0 and sigma_min > 0):
            raise ValueError("dpm_adaptive: the schedule's first and last non-zero σ must be "
                             "above 0")
        self.options = options
        self.t_start, self.t_end = -math.log(sigma_max), -math.log(sigma_min)
        self.forward = self.t_end > self.t_start
        if not self.forward and options.eta:
            raise ValueError("dpm_adaptive: eta must be 0 on a rising schedule (FlipSigmas: "
                             "unsampling runs the ODE backwards, which cannot add noise)")
        self.x = working(x)
        self.x_prev = self.x
        self.s = self.t_start
        self.denoise, self.noise = denoise, noise
        self.controller = PIDController(options.h_init * (1 if self.forward else -1), options,
                                        1.5 if options.eta else options.order)
        self.max_calls = MAX_MODEL_CALLS if max_calls is None else max_calls
        self.calls = self.accepted = self.rejected = 0
        self.last_denoised: torch.Tensor | None = None
        self._eps_at_s: torch.Tensor | None = None  # ε(x, s), kept through rejections

    @property
    def done(self) -> bool:
        if self.forward:
            return not self.s < self.t_end - 1e-5
        return not self.s > self.t_end + 1e-5

    @property
    def sigma(self) -> float:
        """Where the solver is now."""
        return _sigma(self.s)

    def _eps(self, x: torch.Tensor, t: float) -> torch.Tensor:
        if self.calls >= self.max_calls:
            raise ValueError(
                f"dpm_adaptive made {self.max_calls} model calls without reaching σ "
                f"{_sigma(self.t_end):.4g} (it got to σ {self.sigma:.4g}): raise rtol or atol "
                f"(or h_init), or use a fixed-step sampler")
        self.calls += 1
        sigma = _sigma(t)
        return (x - self.denoise(x, sigma).to(x.dtype)) / sigma

    def _low_high(self, eps: torch.Tensor, t_next: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The low- and high-order solutions at ``t_next`` from ``(x, s)``."""
        x, s = self.x, self.s
        h = t_next - s
        sig_next = _sigma(t_next)
        first = x - sig_next * math.expm1(h) * eps  # DPM-Solver-1 (DDIM)
        if self.options.order == 2:
            s1 = s + h / 2
            u1 = x - _sigma(s1) * math.expm1(h / 2) * eps
            d1 = self._eps(u1, s1) - eps
            return first, first - sig_next * math.expm1(h) * d1  # DPM-Solver-2, r₁ = ½
        r1, r2 = 1 / 3, 2 / 3
        s1, s2 = s + r1 * h, s + r2 * h
        u1 = x - _sigma(s1) * math.expm1(r1 * h) * eps
        d1 = self._eps(u1, s1) - eps
        low = first - sig_next / (2 * r1) * math.expm1(h) * d1  # DPM-Solver-2, r₁ = ⅓
        u2 = (x - _sigma(s2) * math.expm1(r2 * h) * eps
              - _sigma(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * d1)
        d2 = self._eps(u2, s2) - eps
        high = first - sig_next / r2 * (math.expm1(h) / h - 1) * d2  # DPM-Solver-3
        return low, high

    def attempt(self) -> bool:
        """One attempted step; returns whether it was accepted."""
        opts = self.options
        step_to = self.s + self.controller.h
        t = min(self.t_end, step_to) if self.forward else max(self.t_end, step_to)
        if not math.isfinite(self.controller.h) or t == self.s:
            raise ValueError(
                f"dpm_adaptive: the step-size controller broke down at σ {self.sigma:.4g} "
                f"(step {self.controller.h:g} in log σ): use gentler pcoeff / icoeff / dcoeff "
                f"(defaults 0, 1, 0) or a lower accept_safety")
        t_solve, noise_level = t, 0.0
        if opts.eta:
            down, _ = ancestral_sigmas(self.sigma, _sigma(t), opts.eta)
            t_solve = self.t_end if down <= 0 else min(self.t_end, -math.log(down))
            noise_level = math.sqrt(max(_sigma(t) ** 2 - _sigma(t_solve) ** 2, 0.0))
        if self._eps_at_s is None:
            self._eps_at_s = self._eps(self.x, self.s)
        eps = self._eps_at_s
        self.last_denoised = self.x - self.sigma * eps
        low, high = self._low_high(eps, t_solve)
        delta = torch.maximum(torch.full_like(low, opts.atol),
                              opts.rtol * torch.maximum(low.abs(), self.x_prev.abs()))
        error = float(torch.linalg.vector_norm((low - high) / delta)) / math.sqrt(low.numel())
        if not self.controller.propose(error):
            self.rejected += 1
            return False
        self.x_prev = low
        if noise_level and self.noise is not None:
            high = high + noise_level * opts.s_noise * self.noise(high)
        self.x, self.s = high, t
        self._eps_at_s = None
        self.accepted += 1
        return True

    def passed(self, sigma: float) -> bool:
        """Whether the solver has reached noise level ``sigma`` (0: never, the solver stops
        at σ_min)."""
        if sigma <= 0:
            return False
        return self.s >= -math.log(sigma) if self.forward else self.s <= -math.log(sigma)

    def run(self) -> torch.Tensor:
        while not self.done:
            self.attempt()
        return self.x


def dpm_adaptive(x: torch.Tensor, sigma_max: float, sigma_min: float, denoise: Denoiser,
                 options: AdaptiveOptions | None = None,
                 noise: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 max_calls: int | None = None) -> tuple[torch.Tensor, AdaptiveSolver]:
    """Integrate from ``sigma_max`` to ``sigma_min`` with any denoiser (tests, analytic
    models); returns the latent there and the solver (its ``calls``, ``accepted``...)."""
    solver = AdaptiveSolver(x, sigma_max, sigma_min, options or AdaptiveOptions(), denoise,
                            noise, max_calls)
    return solver.run(), solver
