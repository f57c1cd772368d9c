"""ComfyUI's ER-SDE, SEEDS and SA-Solver samplers, and DPM++ 2S ancestral with CFG++.

All run on diffusers' ``EulerDiscreteScheduler`` (its σ schedules, custom σ lists,
``scale_model_input``, ``add_noise``) in the variables of :mod:`sigma_samplers`:
``x = x0 + σ·ε``, ``D`` the model's x0, the half log-SNR ``λ = −log σ`` (α = 1 here), a
step ``h = λ' − λ = log(σ/σ')``; ``y·φ₁(−y) = 1 − e^{−y}``, ``y·φ₂(−y) = (y − 1 + e^{−y})/y``.

- ``er_sde`` (Cui et al. 2023), one model call a step: :class:`ERSDESampler`.
- ``seeds_2``, ``seeds_3`` (Gonzalez et al. 2023), two / three: :class:`SEEDSSampler`.
- ``sa_solver`` (PEC, one) and ``sa_solver_pece`` (two) (Xue et al. 2023):
  :class:`StochasticAdams`.
- ``dpmpp_2s_ancestral_cfg_pp``, two: :class:`DPMPP2SAncestralCFGPPSampler`.

Several model calls a step (:class:`StagedSampler`) are laid out as diffusers' Heun and
KDPM2 lay theirs: the calls' σs and timesteps interleaved, ``order`` calls a step and one
for the last step (to σ = 0), so step k starts at call ``k·order`` and KSamplerAdvanced's
windows and denoise < 1 cut whole steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from nodes.diffusion.schedulers import training_sigmas
from nodes.diffusion.sigma_samplers import Node, SigmaSampler, ancestral_sigmas, with_options

#: Gauss-Legendre nodes and weights on [−1, 1] for the samplers' integrals
_GL_X, _GL_W = np.polynomial.legendre.leggauss(24)


def _decay(y: float) -> float:
    """``1 − e^{−y}`` (= y·φ₁(−y))."""
    return -math.expm1(-y)


def _ramp(y: float) -> float:
    """``(y − 1 + e^{−y})/y`` (= y·φ₂(−y)), → 0 as y → 0."""
    return (y + math.expm1(-y)) / y if y else 0.0


def _quadrature(start: float, end: float, pieces: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre points and weights on [start, end], cut in ``pieces``."""
    edges = np.linspace(start, end, pieces + 1)
    half = np.diff(edges)[:, None] / 2
    return (edges[:-1, None] + half * (_GL_X + 1)).ravel(), (half * _GL_W).ravel()


def percent_to_sigma(model_sigmas: list[float], percent: float) -> float:
    """The σ a fraction of the schedule in (ComfyUI's ``percent_to_sigma``: timestep
    ``(1 − percent)·(T − 1)``, log σ interpolated); ∞ at 0 and 0 at 1. ``model_sigmas``:
    the training σs, lowest first."""
    if percent <= 0:
        return math.inf
    if percent >= 1:
        return 0.0
    log_sigmas = np.log(np.asarray(model_sigmas, dtype=np.float64))
    t = (1 - percent) * (len(log_sigmas) - 1)
    return float(np.exp(np.interp(t, np.arange(len(log_sigmas)), log_sigmas)))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# --- ER-SDE --------------------------------------------------------------------------------


class ERSDESampler(SigmaSampler):
    """``er_sde``: ER-SDE-Solver-3 on ``f`` (``power`` None: ER-SDE's own
    ``λ·(e^{λ^0.3} + 10)``; p: ``λ^p``, 1 the ODE, 1 + η the reverse-time SDE). From σ to σ'
    with ``r = f(σ')/f(σ)`` and D', D'' divided differences of the last D's in σ:
    ``x' = r·x + (1 − r)·D + (σ' − σ + f(σ')·∫dλ/f)·D' + ((σ' − σ)²/2 + f(σ')·∫(λ − σ)dλ/f)·D''
    + s_noise·√(σ'² − r²σ²)·z``, integrals over [σ', σ] (closed form for λ^p, Gauss-Legendre
    in log λ otherwise; ComfyUI sums 200 points)."""

    power: float | None = None
    max_stage = 3

    def scaler(self, lam: np.ndarray | float) -> np.ndarray | float:
        if self.power is None:
            return lam * (np.exp(np.power(lam, 0.3)) + 10.0)
        return np.power(lam, self.power)

    def integrals(self, sigma: float, sigma_next: float) -> tuple[float, float]:
        """``f(σ')·∫dλ/f`` and ``f(σ')·∫(λ − σ)dλ/f`` over [σ', σ]."""
        if self.power is not None:  # f = λ^p, q = σ'/σ: closed forms
            p, log_q = self.power, math.log(sigma_next / sigma)
            first = (sigma_next * -log_q if p == 1
                     else sigma_next * -math.expm1((p - 1) * log_q) / (p - 1))
            whole = (sigma_next ** 2 * -log_q if p == 2
                     else sigma_next ** 2 * math.expm1((p - 2) * log_q) / (2 - p))
            return first, whole - sigma * first
        u, w = _quadrature(math.log(sigma_next), math.log(sigma))
        lam = np.exp(u)
        weights = w * lam / self.scaler(lam) * float(self.scaler(sigma_next))
        return float(weights.sum()), float((weights * (lam - sigma)).sum())

    def update(self, sample: torch.Tensor, now: Node, sigma_next: float) -> torch.Tensor:
        if sigma_next == 0:
            return now.denoised
        sigma, d = now.sigma, now.denoised
        r = float(self.scaler(sigma_next) / self.scaler(sigma))
        x = r * sample + (1 - r) * d
        stage = min(self.max_stage, len(self.history) + 1)
        if stage >= 2:
            first, whole = self.integrals(sigma, sigma_next)
            prev = self.history[-1]
            slope = (d - prev.denoised) / (sigma - prev.sigma)
            x = x + (sigma_next - sigma + first) * slope
            if stage >= 3:
                older = self.history[-2]
                prev_slope = (prev.denoised - older.denoised) / (prev.sigma - older.sigma)
                curvature = (slope - prev_slope) / ((sigma - older.sigma) / 2)
                x = x + ((sigma_next - sigma) ** 2 / 2 + whole) * curvature
        if self.s_noise > 0:
            spread = math.sqrt(max(sigma_next ** 2 - (r * sigma) ** 2, 0.0))
            x = x + self.s_noise * spread * randn_tensor(
                x.shape, dtype=torch.float32, device=x.device,
                generator=getattr(self, "generator", None))
        return x

    def configure(self, eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "ER-SDE",
                  max_stage: int = 3) -> ERSDESampler:
        """SamplerER_SDE's options: ODE (and the reverse-time SDE at η = 0) without noise;
        η applies to the reverse-time SDE only, as in ComfyUI."""
        _check(solver_type in ("ER-SDE", "Reverse-time SDE", "ODE"),
               f"er_sde: solver_type {solver_type!r} is not ER-SDE, Reverse-time SDE or ODE")
        _check(int(max_stage) in (1, 2, 3), f"er_sde: max_stage {max_stage} is not 1, 2 or 3")
        _check(eta >= 0 and s_noise >= 0, "er_sde: eta and s_noise must be at least 0")
        if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
            self.power, self.s_noise = 1.0, 0.0
        else:
            self.power = None if solver_type == "ER-SDE" else 1.0 + float(eta)
            self.s_noise = float(s_noise)
        self.max_stage = int(max_stage)
        return self


# --- several model calls a step ----------------------------------------------------------


class StagedSampler(EulerDiscreteScheduler):
    """Euler's scheduler with ``order`` model calls a step: :meth:`stage_sigmas` gives
    where a step's later calls are, :meth:`advance` what each call does with the model's
    x0 there (it returns the next call's sample, or the step's result)."""

    order = 2
    cfg_pp = False
    eta = 1.0
    s_noise = 1.0
    denoised = SigmaSampler.denoised

    def stage_sigmas(self, sigma: float, sigma_next: float) -> list[float]:
        """The σs of the step's calls after its first (``order − 1`` of them)."""
        raise NotImplementedError

    def advance(self, k: int, stage: int, sample: torch.Tensor,
                denoised: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the run's state (a new schedule, or a window that starts afresh)."""
        self.state: dict[str, Any] = {}

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None,
                      timesteps: list[int] | None = None,
                      sigmas: list[float] | None = None) -> None:
        super().set_timesteps(num_inference_steps, device, timesteps, sigmas)
        self.levels = [float(s) for s in self.sigmas]  # the steps' σs
        log_sigmas = np.log(np.array(((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5))
        continuous = (self.config.timestep_type == "continuous"
                      and self.config.prediction_type == "v_prediction")
        call_sigmas: list[float] = []
        call_steps: list[float] = []
        self.plan: list[tuple[int, int]] = []  # (step, stage) of each call
        for k, t in enumerate(self.timesteps.tolist()):
            sigma, sigma_next = self.levels[k], self.levels[k + 1]
            extra = self.stage_sigmas(sigma, sigma_next) if sigma_next > 0 else []
            call_sigmas += [sigma, *extra]
            call_steps += [t, *(0.25 * math.log(s) if continuous
                                else float(self._sigma_to_t(np.array(s), log_sigmas))
                                for s in extra)]
            self.plan += [(k, j) for j in range(len(extra) + 1)]
        self.sigmas = torch.tensor([*call_sigmas, self.levels[-1]], dtype=torch.float32)
        self.timesteps = torch.tensor(call_steps, dtype=torch.float32, device=device)
        self._begin_index = 0  # interleaved timesteps repeat: never look a call up by one
        self.reset()

    def set_begin_index(self, begin_index: int = 0) -> None:
        super().set_begin_index(begin_index)
        self.reset()

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        return randn_tensor(like.shape, dtype=torch.float32, device=like.device,
                            generator=self.state.get("generator"))

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor,
             sample: torch.Tensor, generator: torch.Generator | None = None,
             return_dict: bool = True, uncond_output: torch.Tensor | None = None,
             **_: Any) -> EulerDiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        if self.step_index is None:
            self._init_step_index(timestep)
        k, stage = self.plan[self.step_index]
        sigma = float(self.sigmas[self.step_index])
        x = sample.to(torch.float32)
        denoised = self.denoised(model_output, x, sigma)
        if self.cfg_pp and uncond_output is not None and stage == 0:
            x = denoised + (x - self.denoised(uncond_output, x, sigma))  # CFG++'s x̃
        self.state["generator"] = generator
        prev = self.advance(k, stage, x, denoised).to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return prev, denoised
        return EulerDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)


class SEEDSSampler(StagedSampler):
    """SEEDS: stages at ``c_j·h`` (``nodes``); with ``z = (1 + η)·h`` each goes from x to
    ``x(c) = e^{−cz}·x + cz·φ₁(−cz)·D + cz·φ₂(−cz)·(c/c_prev)·(D_prev − D)`` (the last term
    from the second stage on, D_prev the model's x0 at the previous stage), the step's end
    at c = 1; the Brownian path's increments go along: ``W_c = e^{−(c − c_prev)ηh}·W_prev +
    √(1 − e^{−2(c − c_prev)ηh})·z_c``, added as ``s_noise·σ_c·W_c``. ``phi_1`` (SEEDS-2's
    default) ends with ``z·φ₁(−z)·(D + (D₂ − D)/(2r))`` instead."""

    nodes: tuple[float, ...] = (0.5,)
    solver_type = "phi_2"

    def stage_sigmas(self, sigma: float, sigma_next: float) -> list[float]:
        return [sigma * (sigma_next / sigma) ** c for c in self.nodes]

    def advance(self, k: int, stage: int, sample: torch.Tensor,
                denoised: torch.Tensor) -> torch.Tensor:
        sigma, sigma_next = self.levels[k], self.levels[k + 1]
        if sigma_next == 0:
            return denoised
        if stage == 0:
            self.state.update(x=sample, d=denoised, path=None)
        x, d = self.state["x"], self.state["d"]
        h = math.log(sigma / sigma_next)
        z = (1 + self.eta) * h
        places = (0.0, *self.nodes, 1.0)
        c, c_prev = places[stage + 1], places[stage]
        y = c * z
        if stage == 0:
            out = math.exp(-y) * x + _decay(y) * d
        elif self.solver_type == "phi_1":
            estimate = d + (denoised - d) / (2 * c_prev)
            out = math.exp(-y) * x + _decay(y) * estimate
        else:
            out = math.exp(-y) * x + _decay(y) * d + _ramp(y) * (c / c_prev) * (denoised - d)
        if self.eta > 0 and self.s_noise > 0:
            gap = (c - c_prev) * self.eta * h
            fresh = math.sqrt(_decay(2 * gap)) * self.noise(x)
            path = self.state["path"]
            path = fresh if path is None else math.exp(-gap) * path + fresh
            self.state["path"] = path
            out = out + self.s_noise * sigma * math.exp(-c * h) * path
        return out

    def configure(self, eta: float = 1.0, s_noise: float = 1.0, solver_type: str | None = None,
                  r: float | None = None) -> SEEDSSampler:
        """SamplerSEEDS2's options (seeds_3 takes eta and s_noise)."""
        _check(eta >= 0 and s_noise >= 0, "seeds: eta and s_noise must be at least 0")
        if solver_type is not None or r is not None:
            _check(self.order == 2, "seeds_3 takes no solver_type or r (SamplerSEEDS2's)")
            _check(solver_type in (None, "phi_1", "phi_2"),
                   f"seeds_2: solver_type {solver_type!r} is not phi_1 or phi_2")
            _check(r is None or 0 < r <= 1, f"seeds_2: r {r} is not in (0, 1]")
            self.solver_type = solver_type or self.solver_type
            self.nodes = (float(r),) if r is not None else self.nodes
        self.eta, self.s_noise = float(eta), float(s_noise)
        return self


class SEEDS2Sampler(SEEDSSampler):
    """``seeds_2``: SEEDS-2, the midpoint stage at r = ½ and the ``phi_1`` end (ComfyUI's
    defaults); r = 1 with ``phi_2`` is the exponential Heun method."""

    solver_type = "phi_1"


class SEEDS3Sampler(SEEDSSampler):
    """``seeds_3``: SEEDS-3, stages at ⅓ and ⅔ (third order at η = 0)."""

    order = 3
    nodes = (1 / 3, 2 / 3)


class DPMPP2SAncestralCFGPPSampler(StagedSampler):
    """``dpmpp_2s_ancestral_cfg_pp``: DPM-Solver++(2S) ancestral from CFG++'s x̃: to the
    midpoint σ_s = √(σ·σ_down), ``x₂ = (σ_s/σ)·x̃ + (1 − σ_s/σ)·D(x)``; then
    ``x' = (σ_down/σ)·x̃ + (1 − σ_down/σ)·D(x₂)`` plus σ_up of fresh noise (the guided x0s;
    the unconditional prediction at x₂ is not used). The same as ``dpmpp_2s_ancestral``
    when the unconditional prediction is the guided one."""

    cfg_pp = True

    def stage_sigmas(self, sigma: float, sigma_next: float) -> list[float]:
        return [math.sqrt(sigma * ancestral_sigmas(sigma, sigma_next, self.eta)[0])]

    def advance(self, k: int, stage: int, sample: torch.Tensor,
                denoised: torch.Tensor) -> torch.Tensor:
        sigma, sigma_next = self.levels[k], self.levels[k + 1]
        if sigma_next == 0:
            return denoised
        down, up = ancestral_sigmas(sigma, sigma_next, self.eta)
        if stage == 0:
            self.state["x"] = sample
            ratio = math.sqrt(down / sigma)  # σ_s/σ
            return ratio * sample + (1 - ratio) * denoised
        ratio = down / sigma
        out = ratio * self.state["x"] + (1 - ratio) * denoised
        return out + self.noise(out) * (up * self.s_noise) if up > 0 else out

    def configure(self, eta: float = 1.0, s_noise: float = 1.0) -> StagedSampler:
        _check(0 <= eta <= 1 and s_noise >= 0,
               "dpmpp_2s_ancestral_cfg_pp: eta must be in [0, 1] and s_noise at least 0")
        self.eta, self.s_noise = float(eta), float(s_noise)
        return self


# --- SA-Solver ----------------------------------------------------------------------------


def adams_weights(nodes: list[float], start: float, end: float, tau: float) -> list[float]:
    """SA-Solver's ``b_j = (1 + τ²)·∫_start^end e^{(1 + τ²)(λ − end)}·L_j(λ) dλ`` (L_j the
    Lagrange basis through the λs ``nodes``): the step's weights on the D's there."""
    c = 1 + tau ** 2
    start = max(start, end - 40 / c)  # the kernel is below e^{−40} before
    u, w = _quadrature(start, end, pieces=max(1, math.ceil(c * (end - start) / 4)))
    kernel = c * w * np.exp(c * (u - end))
    weights = []
    for j, node in enumerate(nodes):
        basis = np.ones_like(u)
        for k, other in enumerate(nodes):
            if k != j:
                basis *= (u - other) / (node - other)
        weights.append(float((kernel * basis).sum()))
    return weights


def simple_order_2_weights(nodes: list[float], start: float, end: float, tau: float,
                           corrector: bool) -> list[float]:
    """SA-Solver's simplified two-node weights (its Appendix D; ``simple_order_2``), for
    ``[D_prev, D_now]``: the corrector trapezoid ``ch/2`` on the newer D, the predictor
    ``ch²/2 / (λ_prev − λ_now)`` on the older; the rest of ``1 − e^{−ch}`` on the other."""
    c, h = 1 + tau ** 2, end - start
    total = _decay(c * h)
    if corrector:
        return [total - c * h / 2, c * h / 2]
    older = c * h ** 2 / 2 / (nodes[0] - nodes[1])
    return [older, total - older]


class StochasticAdams:
    """SA-Solver's predictor and corrector, for the PEC (:class:`SASolverSampler`) and PECE
    (:class:`SASolverPECESampler`) layouts. With τ = η inside the SDE window (by the target
    σ), the predictor from (σ, x) is ``x_pred = (σ'/σ)·e^{−τ²h}·x + Σ b_j D_j +
    σ'·√(1 − e^{−2τ²h})·s_noise·z`` over the last ``predictor_order`` D's; the corrector
    redoes that step with the D at σ' among its ``corrector_order`` nodes and the same
    noise. Orders drop near the end of a schedule that ends at 0, as ComfyUI's do."""

    eta = 1.0
    s_noise = 1.0
    predictor_order = 3
    corrector_order = 4
    simple_order_2 = False
    #: the SDE window's σs (from, to); None: 20 % to 80 % of this model's schedule
    sde_sigmas: tuple[float, float] | None = None
    sigmas: torch.Tensor

    def adams_reset(self) -> None:
        self.adams: dict[str, Any] = {"nodes": []}

    def tau(self, sigma: float) -> float:
        if self.sde_sigmas is None:
            model = training_sigmas(self)
            self.sde_sigmas = (percent_to_sigma(model, 0.2), percent_to_sigma(model, 0.8))
        top, bottom = self.sde_sigmas
        return self.eta if top >= sigma >= bottom else 0.0

    def bounds(self, steps_left: int) -> tuple[int, int]:
        """(predictor, corrector) orders for a step with ``steps_left`` steps to go (itself
        included)."""
        known = len(self.adams["nodes"])
        predictor = min(self.predictor_order, known)
        corrector = min(self.corrector_order, known)
        if float(self.sigmas[-1]) == 0:
            predictor, corrector = min(predictor, steps_left - 1), min(corrector, steps_left)
        return predictor, corrector

    def add_node(self, sigma: float, denoised: torch.Tensor, replace: bool = False) -> None:
        nodes = self.adams["nodes"]
        if replace:
            nodes.pop()
        nodes.append((-math.log(sigma), denoised))
        del nodes[:-max(self.predictor_order, self.corrector_order, 1)]

    def combine(self, order: int, start: float, end: float, tau: float,
                corrector: bool) -> torch.Tensor:
        nodes = self.adams["nodes"][-order:]
        lambdas = [lam for lam, _ in nodes]
        if self.simple_order_2 and order == 2:
            weights = simple_order_2_weights(lambdas, start, end, tau, corrector)
        else:
            weights = adams_weights(lambdas, start, end, tau)
        return sum(w * d for w, (_, d) in zip(weights, nodes, strict=True))

    def predict(self, x: torch.Tensor, sigma: float, sigma_next: float, order: int,
                generator: torch.Generator | None) -> torch.Tensor:
        tau = self.tau(sigma_next)
        h = math.log(sigma / sigma_next)
        out = (sigma_next / sigma) * math.exp(-tau ** 2 * h) * x + self.combine(
            order, -math.log(sigma), -math.log(sigma_next), tau, corrector=False)
        noise = None
        if tau > 0 and self.s_noise > 0:
            noise = randn_tensor(x.shape, dtype=torch.float32, device=x.device,
                                 generator=generator)
            noise = noise * (sigma_next * math.sqrt(_decay(2 * tau ** 2 * h)) * self.s_noise)
            out = out + noise
        self.adams.update(x=x, sigma=sigma, tau=tau, noise=noise)
        return out

    def correct(self, sigma: float, order: int) -> torch.Tensor:
        state = self.adams
        tau, before = state["tau"], state["sigma"]
        h = math.log(before / sigma)
        out = (sigma / before) * math.exp(-tau ** 2 * h) * state["x"] + self.combine(
            order, -math.log(before), -math.log(sigma), tau, corrector=True)
        return out if state["noise"] is None else out + state["noise"]

    def configure(self, eta: float = 1.0, s_noise: float = 1.0,
                  sde_sigmas: tuple[float, float] | None = None, predictor_order: int = 3,
                  corrector_order: int = 4, use_pece: bool | None = None,
                  simple_order_2: bool = False) -> Any:
        """SamplerSASolver's options; ``use_pece`` (with a corrector) runs
        :class:`SASolverPECESampler`, without one it would change nothing (as in ComfyUI)."""
        _check(eta >= 0 and s_noise >= 0, "sa_solver: eta and s_noise must be at least 0")
        _check(1 <= predictor_order <= 6 and 0 <= corrector_order <= 6,
               f"sa_solver: predictor_order {predictor_order} is not 1-6 or corrector_order "
               f"{corrector_order} is not 0-6")
        _check(sde_sigmas is None or sde_sigmas[0] >= sde_sigmas[1],
               "sa_solver: the SDE window starts below where it ends (sde_start_percent "
               "after sde_end_percent)")
        target: Any = self
        if use_pece is None:  # keep the layout asked for by name
            use_pece = isinstance(self, SASolverPECESampler)
        pece = bool(use_pece) and corrector_order > 0
        if pece != isinstance(self, SASolverPECESampler):
            target = (SASolverPECESampler if pece else SASolverSampler).from_config(self.config)
        target.eta, target.s_noise, target.sde_sigmas = float(eta), float(s_noise), sde_sigmas
        target.predictor_order, target.corrector_order = int(predictor_order), int(corrector_order)
        target.simple_order_2 = bool(simple_order_2)
        return target


class SASolverSampler(StochasticAdams, SigmaSampler):
    """``sa_solver``: PEC, one model call a step at the predicted state: correct the
    previous step with it (not before the final step to σ = 0), then predict the next."""

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)
        self.adams_reset()

    def set_begin_index(self, begin_index: int = 0) -> None:
        super().set_begin_index(begin_index)
        self.adams_reset()

    def update(self, sample: torch.Tensor, now: Node, sigma_next: float) -> torch.Tensor:
        self.add_node(now.sigma, now.denoised)
        predictor, corrector = self.bounds(len(self.sigmas) - 1 - self.step_index)
        x = sample
        if "x" in self.adams and sigma_next > 0 and corrector > 0:
            x = self.correct(now.sigma, corrector)
        if sigma_next == 0:
            return now.denoised
        return self.predict(x, now.sigma, sigma_next, predictor,
                            getattr(self, "generator", None))


class SASolverPECESampler(StochasticAdams, StagedSampler):
    """``sa_solver_pece``: PECE on Heun's layout, two calls a step: at the corrected state
    (σ) — its D replaces the one at the prediction there — then predict σ', evaluate the
    prediction at σ' and correct it. The last step is one call; a window that ends early
    ends on its corrected state (ComfyUI's on the prediction)."""

    def stage_sigmas(self, sigma: float, sigma_next: float) -> list[float]:
        return [sigma_next]

    def reset(self) -> None:
        super().reset()
        self.adams_reset()

    def advance(self, k: int, stage: int, sample: torch.Tensor,
                denoised: torch.Tensor) -> torch.Tensor:
        sigma, sigma_next = self.levels[k], self.levels[k + 1]
        steps_left = len(self.levels) - 1 - k
        if stage == 0:
            self.add_node(sigma, denoised, replace=bool(self.adams["nodes"]))
            if sigma_next == 0:
                return denoised
            predictor, _ = self.bounds(steps_left)
            return self.predict(sample, sigma, sigma_next, predictor, self.state["generator"])
        self.add_node(sigma_next, denoised)
        _, corrector = self.bounds(steps_left - 1)
        return self.correct(sigma_next, corrector) if corrector > 0 else sample


_SA_OPTIONS = {"sde_sigmas": None, "predictor_order": 3, "corrector_order": 4,
               "use_pece": False, "simple_order_2": False}
#: the options each sampler here takes from ComfyUI's sampler nodes, and their defaults
STAGE_OPTIONS: Mapping[str, Mapping[str, Any]] = {
    "er_sde": {"solver_type": "ER-SDE", "max_stage": 3}, "seeds_3": {},
    "seeds_2": {"solver_type": "phi_1", "r": 0.5}, "dpmpp_2s_ancestral_cfg_pp": {},
    "sa_solver": _SA_OPTIONS, "sa_solver_pece": {**_SA_OPTIONS, "use_pece": True}}
_CONFIGURABLE = (ERSDESampler, SEEDSSampler, StochasticAdams, DPMPP2SAncestralCFGPPSampler)


def with_stage_options(scheduler: Any, sampler_name: str, eta: float = 1.0,
                       s_noise: float = 1.0, order: int | None = None,
                       options: Mapping[str, Any] | None = None) -> Any:
    """``scheduler`` with the options of ComfyUI's sampler nodes: for the samplers here
    their ``configure`` (eta, s_noise and :data:`STAGE_OPTIONS`), for the others
    :func:`sigma_samplers.with_options`. An option a sampler cannot take is an error."""
    options = dict(options or {})
    if not isinstance(scheduler, _CONFIGURABLE):
        _check(not options, f"sampler {sampler_name!r} takes none of {sorted(options)}")
        return with_options(scheduler, sampler_name, eta, s_noise, order)
    _check(order is None, f"only the lms sampler takes an order, not {sampler_name!r}")
    unknown = sorted(set(options) - set(STAGE_OPTIONS.get(sampler_name, {})))
    _check(not unknown, f"sampler {sampler_name!r} takes no option {', '.join(unknown)}")
    configure: Callable[..., Any] = scheduler.configure
    return configure(eta=eta, s_noise=s_noise, **options)
