"""ComfyUI's σ-space samplers that diffusers lacks, as diffusers schedulers.

Each is diffusers' ``EulerDiscreteScheduler`` (its σ schedule, Karras / exponential /
beta spacings, custom σs, ``scale_model_input``, ``add_noise``, step indices) with another
update rule in :meth:`SigmaSampler.update`, so the sampling loop, its extensions,
KSamplerAdvanced windows and SIGMAS run them like any diffusers scheduler. The updates
work on the probability-flow ODE in k-diffusion's variables: ``x = x0 + σ·ε``, the
denoiser ``D(x, σ)`` (the x0 the model predicts) and the slope ``d = (x − D) / σ``.

- ``ipndm``: improved pseudo-numerical (Zhang & Chen 2022, "Fast Sampling of Diffusion
  Models with Exponential Integrator", iPNDM): 4th-order Adams-Bashforth on ``d``,
  warmed up through orders 1-3. ``ipndm_v``: the same on the schedule's uneven steps
  (the Adams-Bashforth weights integrate the polynomial through the earlier slopes at
  their own σs).
- ``res_multistep``: the second-order exponential multistep integrator of Zhang et al.
  2023 (RES): in ``λ = −log σ`` the update ``x' = e^{−h} x + h(b₁ D_i + b₂ D_{i−1})`` with
  ``b₁ = φ₁(−h) − φ₂(−h)/c₂``, ``b₂ = φ₂(−h)/c₂`` and ``c₂`` the previous node's place,
  ``−h_{i−1}/h``: exact for a denoiser linear in λ.
- ``gradient_estimation``: Permenter & Yuan 2023: from the second step the slope is
  ``γ·d_i + (1 − γ)·d_{i−1}``, γ = 2.
- ``*_ancestral``: each step goes to σ_down and adds fresh noise of σ_up (η = 1), as
  Euler ancestral does.
- ``*_cfg_pp``: CFG++ (Chung et al. 2024): the step lands on the guided x0 but renoises
  with the *unconditional* prediction's noise, ``x' = D_guided + σ'·ε_uncond`` for Euler.
  For every sampler here the solver steps from ``x̃ = D_guided + σ·ε_uncond`` instead of
  ``x`` (which gives Euler's form exactly); ComfyUI's multistep CFG++ samplers mix the
  unconditional x0 into their correction terms instead, so those images differ slightly.
  cfg is the paper's λ, so they want a low one (about 0.5-2, :data:`CFG_PP_NOTE`); the
  sampling loop runs the unconditional pass even at cfg ≤ 1 and hands its prediction to
  ``step`` as ``uncond_output``.
- ``dpmpp_2m_cfg_pp``: DPM-Solver++(2M) (Lu et al. 2022) in σ, with CFG++.

Importing this module imports torch and diffusers; :mod:`nodes.diffusion.schedulers`
imports it only when one of these is built.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler, KDPM2AncestralDiscreteScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

#: what the node descriptions say about the CFG++ samplers' scale
CFG_PP_NOTE = ("the *_cfg_pp samplers (CFG++) want a low cfg, about 0.5-2: cfg is CFG++'s "
               "λ, and the usual 7 overshoots")


def ancestral_sigmas(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up) of an ancestral step from σ to σ': the deterministic step goes to
    σ_down, then noise of σ_up tops it up to σ' (σ_down² + σ_up² = σ'²)."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2)
                                         / sigma ** 2))
    return math.sqrt(sigma_next ** 2 - up ** 2), up


def adams_bashforth_weights(nodes: list[float], target: float) -> list[float]:
    """Weights ``w_j`` with ``∫_{nodes[0]}^{target} p(s) ds = Σ w_j f_j`` for the polynomial
    ``p`` through ``(nodes[j], f_j)``: the variable-step Adams-Bashforth step (newest node
    first). On even steps they are the classic 1, (3, −1)/2, (23, −16, 5)/12, ...."""
    shifted = [n - nodes[0] for n in nodes]  # about the newest node: better conditioned
    weights = []
    for j, node in enumerate(shifted):
        basis = np.poly1d([1.0])
        for k, other in enumerate(shifted):
            if k != j:
                basis *= np.poly1d([1.0, -other]) / (node - other)
        weights.append(float(basis.integ()(target - nodes[0])))
    return weights


def _phi1(z: float) -> float:
    return math.expm1(z) / z if z != 0 else 1.0


def _phi2(z: float) -> float:
    return (_phi1(z) - 1.0) / z if z != 0 else 0.5


class Node(NamedTuple):
    """One earlier step: its σ, the model's x0 there and the slope ``(x − x0)/σ``."""

    sigma: float
    denoised: torch.Tensor
    slope: torch.Tensor


class SigmaSampler(EulerDiscreteScheduler):
    """Euler's scheduler with another σ-space update (subclasses' :meth:`update`)."""

    ancestral = False
    cfg_pp = False
    #: ancestral steps: how much of each step's noise is fresh (1: all, 0: none, the ODE)
    #: and a factor on that noise (SamplerEulerAncestral's eta and s_noise)
    eta = 1.0
    s_noise = 1.0

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)
        self.history: list[Node] = []

    def set_begin_index(self, begin_index: int = 0) -> None:
        super().set_begin_index(begin_index)
        self.history = []  # a window starts afresh, as a new ComfyUI sampler would

    def denoised(self, model_output: torch.Tensor, sample: torch.Tensor,
                 sigma: float) -> torch.Tensor:
        """The x0 the model's output stands for (Euler's conversion)."""
        kind = self.config.prediction_type
        if kind in ("sample", "original_sample"):
            return model_output.float()
        if kind == "epsilon":
            return sample - sigma * model_output.float()
        if kind == "v_prediction":
            return (model_output.float() * (-sigma / (sigma ** 2 + 1) ** 0.5)
                    + sample / (sigma ** 2 + 1))
        raise ValueError(f"prediction_type {kind!r} is not epsilon, v_prediction or sample")

    def update(self, sample: torch.Tensor, now: Node, sigma_next: float) -> torch.Tensor:
        """The deterministic step from ``now`` to ``sigma_next`` (σ_down for ancestral
        ones); ``self.history`` holds the earlier steps, newest last."""
        raise NotImplementedError

    def split(self, sigma: float, sigma_next: float) -> tuple[float, float]:
        """(σ the deterministic step goes to, σ of the fresh noise added after it)."""
        if self.ancestral:
            return ancestral_sigmas(sigma, sigma_next, self.eta)
        return sigma_next, 0.0

    def cfg_pp_sample(self, sample: torch.Tensor, denoised: torch.Tensor,
                      uncond_denoised: torch.Tensor) -> torch.Tensor:
        """CFG++: the sample the solver steps from, re-expressed with the guided x0 and
        the unconditional prediction's noise, x̃ = D_guided + σ·ε_uncond."""
        return denoised + (sample - uncond_denoised)

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor,
             sample: torch.Tensor, generator: torch.Generator | None = None,
             return_dict: bool = True, uncond_output: torch.Tensor | None = None,
             **_: Any) -> EulerDiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        if self.step_index is None:
            self._init_step_index(timestep)
        sample = sample.to(torch.float32)
        sigma = float(self.sigmas[self.step_index])
        sigma_next = float(self.sigmas[self.step_index + 1])
        denoised = self.denoised(model_output, sample, sigma)
        if self.cfg_pp and uncond_output is not None:
            sample = self.cfg_pp_sample(sample, denoised,
                                        self.denoised(uncond_output, sample, sigma))
        now = Node(sigma, denoised, (sample - denoised) / sigma)
        sigma_down, sigma_up = self.split(sigma, sigma_next)
        self.generator = generator  # for the SDE samplers' noise
        prev = self.update(sample, now, sigma_down)
        self.history = [*self.history[-2:], now]  # iPNDM, the longest memory, needs 3
        if sigma_up > 0:
            noise = randn_tensor(model_output.shape, dtype=torch.float32,
                                 device=model_output.device, generator=generator)
            prev = prev + noise * (sigma_up * self.s_noise)
        prev = prev.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return prev, denoised
        return EulerDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)


class EulerSampler(SigmaSampler):
    """Euler's step, ``x + (σ' − σ)·d``."""

    def update(self, sample: torch.Tensor, now: Node, sigma_next: float) -> torch.Tensor:
        return sample + (sigma_next - now.sigma) * now.slope


class EulerAncestralSampler(EulerSampler):
    """Euler ancestral with eta and s_noise (SamplerEulerAncestral); at 1 and 1 it is
    diffusers' ``EulerAncestralDiscreteScheduler``."""

    ancestral = True


class LCMSampler(EulerSampler):
    """``lcm`` on any σ list: diffusers' ``LCMScheduler`` step in σ. The x0 gets the
    consistency models' boundary condition, ``c_out·x0 + c_skip·x_vp`` at the step's
    timestep × ``timestep_scaling``, and the next sample is that x0 with fresh noise of σ'
    (equal to ``LCMScheduler`` on the same timesteps)."""

    timestep_scaling = 10.0  # LCMScheduler's default
    sigma_data = 0.5

    def denoised(self, model_output: torch.Tensor, sample: torch.Tensor,
                 sigma: float) -> torch.Tensor:
        x0 = super().denoised(model_output, sample, sigma)
        t = float(self.timesteps[self.step_index]) * self.timestep_scaling
        c_skip = self.sigma_data ** 2 / (t ** 2 + self.sigma_data ** 2)
        c_out = t / (t ** 2 + self.sigma_data ** 2) ** 0.5
        return c_out * x0 + c_skip * sample / (sigma ** 2 + 1) ** 0.5

    def split(self, sigma: float, sigma_next: float) -> tuple[float, float]:
        return 0.0, sigma_next  # to x0, then noise to σ'


class EulerCFGPPSampler(EulerSampler):
    """``euler_cfg_pp``: ``x' = D_guided + σ'·ε_uncond``."""

    cfg_pp = True


class EulerAncestralCFGPPSampler(EulerSampler):
    """``euler_ancestral_cfg_pp``."""

    cfg_pp = ancestral = True


class EulerPPSampler(EulerCFGPPSampler):
    """``euler_pp``, ComfyUI's "alternative" Euler CFG++ (SamplerEulerCFG++'s second
    version): Euler from x with the slope ``(x − 2·D_guided + D_uncond)/σ``, i.e. the
    plain slope minus the guidance's own x0 shift, ``(D_guided − D_uncond)/σ``."""

    def cfg_pp_sample(self, sample: torch.Tensor, denoised: torch.Tensor,
                      uncond_denoised: torch.Tensor) -> torch.Tensor:
        self.start = (self.step_index, sample)  # the step still starts from x
        # whose slope (x̃ − D)/σ is (x − 2D + D_u)/σ
        return sample - denoised + uncond_denoised

    def update(self, sample: torch.Tensor, now: Node, sigma_next: float) -> torch.Tensor:
        start = getattr(self, "start", None)
        x = start[1] if start is not None and start[0] == self.step_index else sample
        return x + (sigma_next - now.sigma) * now.slope


class DPMPP2MSampler(SigmaSampler):
    """DPM-Solver++(2M) (Lu et al. 2022) in σ: ``x' = (σ'/σ)·x − (e^{−h} − 1)·D̂`` with
    ``D̂ = (1 + 1/(2r))·D_i − D_{i−1}/(2r)``, ``r = h_{i−1}/h`` (first order at the first
    step and the last, to σ = 0). Here for its CFG++ form, ``dpmpp_2m_cfg_pp``; plain
    ``dpmpp_2m`` is diffusers' multistep scheduler."""

    def update(self, sample: torch.Tensor, now: Node, sigma_next: float) -> torch.Tensor:
        if sigma_next == 0:
            return now.denoised
        h = math.log(now.sigma) - math.log(sigma_next)
        estimate = now.denoised
        if self.history:
            previous = self.history[-1]
            r = (math.log(previous.sigma) - math.log(now.sigma)) / h
            estimate = (1 + 1 / (2 * r)) * now.denoised - previous.denoised / (2 * r)
        return (sigma_next / now.sigma) * sample - math.expm1(-h) * estimate


class DPMPP2MCFGPPSampler(DPMPP2MSampler):
    """``dpmpp_2m_cfg_pp``."""

    cfg_pp = True


class DPMPP2MSDESampler(SigmaSampler):
    """DPM-Solver++(2M) SDE in σ (diffusers' ``sde-dpmsolver++`` written for σ, so an
    explicit σ list runs it): with ``h = log σ − log σ'``, ``h_η = (1 + η)·h`` and
    ``D₁ = (D_i − D_{i−1})/r``, ``x' = (σ'/σ)·e^{−ηh}·x + (1 − e^{−h_η})·D_i + w·D₁ +
    s_noise·σ'·√(1 − e^{−2ηh})·z``, w = ½(1 − e^{−h_η}) (midpoint) or
    (1 − e^{−h_η})/(−h_η) + 1 (Heun); one draw z a step, as diffusers (the last step lands
    on D). At η = 1 it equals diffusers' scheduler on the same σs; η = 0 is DPM++ 2M."""

    heun = False

    def update(self, sample: torch.Tensor, now: Node, sigma_next: float) -> torch.Tensor:
        noise = randn_tensor(sample.shape, dtype=torch.float32, device=sample.device,
                             generator=getattr(self, "generator", None))
        if sigma_next == 0:
            return now.denoised
        h = math.log(now.sigma) - math.log(sigma_next)
        h_eta = h * (self.eta + 1)
        decay = -math.expm1(-h_eta)  # 1 − e^{−h_η}
        prev = (sigma_next / now.sigma) * math.exp(-h * self.eta) * sample + decay * now.denoised
        if self.history:
            previous = self.history[-1]
            r = (math.log(previous.sigma) - math.log(now.sigma)) / h
            slope = (now.denoised - previous.denoised) / r
            weight = (decay / (-h_eta) + 1) if self.heun else 0.5 * decay
            prev = prev + weight * slope
        if self.eta:
            fresh = math.sqrt(-math.expm1(-2 * h * self.eta))
            prev = prev + sigma_next * fresh * self.s_noise * noise
        return prev


class DPMPP2MSDEHeunSampler(DPMPP2MSDESampler):
    """DPM-Solver++(2M) SDE with Heun's correction weight."""

    heun = True


class IPNDMSampler(SigmaSampler):
    """``ipndm``: 4th-order Adams-Bashforth on the slope with the classic even-step
    weights (iPNDM), lower orders for the first three steps."""

    variable_steps = False
    _EVEN = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12),
             (55 / 24, -59 / 24, 37 / 24, -9 / 24))

    def update(self, sample: torch.Tensor, now: Node, sigma_next: float) -> torch.Tensor:
        nodes = [now, *reversed(self.history)]
        if self.variable_steps:
            weights = adams_bashforth_weights([n.sigma for n in nodes], sigma_next)
            return sample + sum(w * n.slope for w, n in zip(weights, nodes, strict=True))
        weights = self._EVEN[len(nodes) - 1]
        return sample + (sigma_next - now.sigma) * sum(
            w * n.slope for w, n in zip(weights, nodes, strict=True))


class IPNDMVSampler(IPNDMSampler):
    """``ipndm_v``: iPNDM with Adams-Bashforth weights for the schedule's uneven steps."""

    variable_steps = True


class RESMultistepSampler(SigmaSampler):
    """``res_multistep``: RES's second-order exponential multistep (the first step, and
    the last, to σ = 0, are first order)."""

    def update(self, sample: torch.Tensor, now: Node, sigma_next: float) -> torch.Tensor:
        if sigma_next == 0:
            return now.denoised
        h = math.log(now.sigma) - math.log(sigma_next)  # λ' − λ, with λ = −log σ
        if not self.history:
            return math.exp(-h) * sample + h * _phi1(-h) * now.denoised
        previous = self.history[-1]
        c2 = (math.log(now.sigma) - math.log(previous.sigma)) / h  # the previous node at c2·h
        b2 = _phi2(-h) / c2
        b1 = _phi1(-h) - b2
        return math.exp(-h) * sample + h * (b1 * now.denoised + b2 * previous.denoised)


class RESMultistepAncestralSampler(RESMultistepSampler):
    """``res_multistep_ancestral``: RES steps to σ_down, fresh noise up to σ'."""

    ancestral = True


class RESMultistepCFGPPSampler(RESMultistepSampler):
    """``res_multistep_cfg_pp``."""

    cfg_pp = True


class RESMultistepAncestralCFGPPSampler(RESMultistepSampler):
    """``res_multistep_ancestral_cfg_pp``."""

    cfg_pp = ancestral = True


class GradientEstimationSampler(SigmaSampler):
    """``gradient_estimation``: Euler with the slope ``γ·d_i + (1 − γ)·d_{i−1}`` from the
    second step (Permenter & Yuan 2023, γ = 2)."""

    gamma = 2.0

    def update(self, sample: torch.Tensor, now: Node, sigma_next: float) -> torch.Tensor:
        slope = now.slope
        if self.history:
            slope = self.gamma * slope + (1 - self.gamma) * self.history[-1].slope
        return sample + (sigma_next - now.sigma) * slope


def with_options(scheduler: Any, sampler_name: str, eta: float = 1.0, s_noise: float = 1.0,
                 order: int | None = None) -> Any:
    """``scheduler`` with the options of ComfyUI's sampler nodes (SamplerEulerAncestral's
    and SamplerDPMPP_2M_SDE's eta and s_noise, SamplerLMS's order). Euler ancestral with
    other than 1 and 1 runs :class:`EulerAncestralSampler` (DPM++ 2M SDE its σ-space twin,
    which the schedule must be an explicit σ list for); a sampler that cannot take an
    option is an error."""
    if (eta, s_noise) != (1.0, 1.0):
        if type(scheduler).__name__ == "EulerAncestralDiscreteScheduler":
            scheduler = EulerAncestralSampler.from_config(scheduler.config)
        if not (isinstance(scheduler, SigmaSampler)
                and (scheduler.ancestral or isinstance(scheduler, DPMPP2MSDESampler))):
            raise ValueError(
                f"sampler {sampler_name!r} (diffusers' {type(scheduler).__name__}) takes "
                f"no eta or s_noise: leave both at 1, or use euler_ancestral, "
                f"euler_ancestral_cfg_pp, res_multistep_ancestral or dpmpp_2m_sde")
        scheduler.eta, scheduler.s_noise = float(eta), float(s_noise)
    if order is not None:
        if type(scheduler).__name__ != "LMSDiscreteScheduler":
            raise ValueError(f"only the lms sampler takes an order, not {sampler_name!r}")
        step = scheduler.step
        # diffusers' LMS takes its order per step; inspect still sees step's other arguments
        scheduler.step = functools.wraps(step)(functools.partial(step, order=int(order)))
    return scheduler


class GradientEstimationCFGPPSampler(GradientEstimationSampler):
    """``gradient_estimation_cfg_pp``."""

    cfg_pp = True


class DPMPP2SAncestralScheduler(KDPM2AncestralDiscreteScheduler):
    """``dpmpp_2s_ancestral``: DPM-Solver++(2S) ancestral (Lu et al. 2022; k-diffusion's
    "DPM++ 2S a"). Each step is two model calls, laid out as diffusers' KDPM2 ancestral
    lays them out (interleaved timesteps, the midpoint σ_s = √(σ·σ_down)): the first goes
    to σ_s, ``x₂ = (σ_s/σ)·x + (1 − σ_s/σ)·D(x)``; the second from x,
    ``x' = (σ_down/σ)·x + (1 − σ_down/σ)·D(x₂)``, then fresh noise σ_up. The last step
    (to σ = 0) is the first stage alone, which lands on D(x)."""

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor,
             sample: torch.Tensor, generator: torch.Generator | None = None,
             return_dict: bool = True, **_: Any) -> Any:
        from diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete import (
            KDPM2AncestralDiscreteSchedulerOutput,
        )

        if self.step_index is None:
            self._init_step_index(timestep)
        first = self.state_in_first_order
        k = self.step_index if first else self.step_index - 1
        sigma = float(self.sigmas[k])
        sigma_mid = float(self.sigmas_interpol[k])
        sigma_up = float(self.sigmas_up[k])
        sigma_down = float(self.sigmas_down[self.step_index - 1])
        at = sigma if first else sigma_mid  # where the model was evaluated
        kind = self.config.prediction_type
        if kind == "epsilon":
            denoised = sample - at * model_output
        elif kind == "v_prediction":
            denoised = model_output * (-at / (at ** 2 + 1) ** 0.5) + sample / (at ** 2 + 1)
        else:
            raise ValueError(f"dpmpp_2s_ancestral: prediction_type {kind!r} is not epsilon "
                             f"or v_prediction")
        if first:
            self.sample = sample
            ratio = sigma_mid / sigma
            prev = ratio * sample + (1 - ratio) * denoised
        else:
            x, self.sample = self.sample, None
            ratio = sigma_down / sigma
            prev = ratio * x + (1 - ratio) * denoised
            noise = randn_tensor(model_output.shape, dtype=model_output.dtype,
                                 device=model_output.device, generator=generator)
            prev = prev + noise * sigma_up
        self._step_index += 1
        if not return_dict:
            return prev, denoised
        return KDPM2AncestralDiscreteSchedulerOutput(prev_sample=prev,
                                                     pred_original_sample=denoised)
