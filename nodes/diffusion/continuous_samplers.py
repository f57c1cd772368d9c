"""Samplers for continuous-σ models (:mod:`nodes.diffusion.continuous`), as diffusers
schedulers the one sampling loop runs.

:class:`ContinuousBase` is diffusers' ``EDMEulerScheduler`` (its ``scale_model_input``,
c_in = 1/√(σ² + σ_data²), ``add_noise``, step indices) with the timestep and output
reading of ComfyUI's continuous model samplings (:meth:`ContinuousBase.precondition_noise`,
:meth:`ContinuousBase.precondition_outputs`) and explicit σ lists. Every σ-space update rule
(:class:`~nodes.diffusion.sigma_samplers.SigmaSampler`: Euler, Euler ancestral, DPM++ 2M
(SDE), iPNDM, RES, ...; :class:`~nodes.diffusion.stage_samplers.StagedSampler`: several
model calls a step) runs on it unchanged: :func:`continuous_class` puts the rule on
this base. Heun, DPM2 (ancestral), DPM++ 2S ancestral and LCM are written here in the
same form (ComfyUI's k-diffusion updates).

With σ_data = 1 and the ``edm`` / ``v_prediction`` readings this is exactly diffusers'
``EDMEulerScheduler`` / ``EDMDPMSolverMultistepScheduler`` on the same σs (the tests check
it through ``StableDiffusionXLPipeline``).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from diffusers import EDMEulerScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.utils.torch_utils import randn_tensor

from nodes.diffusion.continuous import (
    CONFIG_KEYS,
    OWN_CONTINUOUS,
    ContinuousSpec,
    continuous_sampler_problem,
    continuous_sigmas,
    continuous_spec,
    latent_format,
)
from nodes.diffusion.sigma_samplers import Node, SigmaSampler, ancestral_sigmas
from nodes.diffusion.stage_samplers import DPMPP2SAncestralCFGPPSampler, StagedSampler


class ContinuousBase(EDMEulerScheduler):
    """EDM's scheduler mechanics for ComfyUI's continuous model samplings (see module)."""

    @register_to_config
    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 sigma_data: float = 0.5, sigma_schedule: str = "karras",
                 num_train_timesteps: int = 1000, prediction_type: str = "epsilon",
                 rho: float = 7.0, final_sigmas_type: str = "zero",
                 model_sampling: str = "edm", timestep_form: str = "log") -> None:
        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data,
                         sigma_schedule=sigma_schedule, num_train_timesteps=num_train_timesteps,
                         prediction_type=prediction_type, rho=rho,
                         final_sigmas_type=final_sigmas_type)
        self.history: list[Node] = []

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        # techniques written on a discrete schedule (FABRIC, LEDITS++, DDIM inversion,
        # CLIP guidance, ...) index ᾱ by training timestep; a continuous model has none
        raise AttributeError(
            "this technique needs a discrete noise schedule (ᾱ per training timestep), and "
            "this model samples continuous noise levels (Model Sampling Continuous EDM / V, "
            "CosXL, Playground v2.5); use it with a discrete model")

    @property
    def spec(self) -> ContinuousSpec:
        spec = continuous_spec(dict(self.config))
        assert spec is not None
        return spec

    @property
    def init_noise_sigma(self) -> float:
        """√(σ₀² + 1), σ₀ the schedule's first level (diffusers' EDM schedulers: σ_max)."""
        top = float(self.sigmas[0]) if self.num_inference_steps else self.config.sigma_max
        return (top ** 2 + 1) ** 0.5

    def precondition_noise(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """c_noise: 0.25·log σ, or atan σ·2/π for ModelSamplingContinuousV."""
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.tensor([sigma])
        if self.config.timestep_form == "atan":
            return sigma.atan() / math.pi * 2
        return 0.25 * torch.log(sigma)

    def precondition_outputs(self, sample: torch.Tensor, model_output: torch.Tensor,
                             sigma: float | torch.Tensor) -> torch.Tensor:
        """x0 from the UNet's output F at σ (ComfyUI's ``calculate_denoised``)."""
        kind = self.config.model_sampling
        if kind == "eps":
            return sample - sigma * model_output
        data = self.config.sigma_data
        skip = data ** 2 / (sigma ** 2 + data ** 2)
        out = sigma * data / (sigma ** 2 + data ** 2) ** 0.5
        return skip * sample + (out if kind == "edm" else -out) * model_output

    def x0_coefficients(self, sigma: float) -> tuple[float, float]:
        """``(a, b)`` with x0 = a·x_in + b·F for the UNet's input x_in = c_in·x at σ."""
        data = self.config.sigma_data
        c_in = 1 / (sigma ** 2 + data ** 2) ** 0.5
        if self.config.model_sampling == "eps":
            return 1 / c_in, -sigma
        skip = data ** 2 / (sigma ** 2 + data ** 2)
        out = sigma * data / (sigma ** 2 + data ** 2) ** 0.5
        return skip / c_in, out if self.config.model_sampling == "edm" else -out

    def sigma_at(self, timestep: float | torch.Tensor) -> float:
        """σ at one of this scheduler's UNet timesteps."""
        return self.spec.sigma(float(timestep))

    def denoised(self, model_output: torch.Tensor, sample: torch.Tensor,
                 sigma: float) -> torch.Tensor:
        return self.precondition_outputs(sample, model_output.float(), sigma)

    def levels_for(self, num_inference_steps: int | None,
                   sigmas: Any) -> torch.Tensor:
        """The steps' σs (the last the final level): a given list as it is, else the
        config's Karras / exponential spacing (diffusers' EDM schedulers')."""
        if sigmas is not None:
            levels = torch.as_tensor([float(s) for s in sigmas], dtype=torch.float32)
            if levels.ndim != 1 or len(levels) < 2:
                raise ValueError("a σ list needs at least two levels")
            return levels
        ramp = torch.linspace(0, 1, int(num_inference_steps or 1), dtype=torch.float64)
        if self.config.sigma_schedule == "exponential":
            levels = self._compute_exponential_sigmas(ramp)
        else:
            levels = self._compute_karras_sigmas(ramp)
        last = levels[-1:] if self.config.final_sigmas_type == "sigma_min" else torch.zeros(1)
        return torch.cat([levels.float(), last.float()])

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None,
                      sigmas: Any = None, **_: Any) -> None:
        levels = self.levels_for(num_inference_steps, sigmas)
        self.num_inference_steps = len(levels) - 1
        self.sigmas = levels.cpu()
        self.timesteps = self.precondition_noise(levels[:-1]).to(device=device)
        self._step_index = None
        self._begin_index = None
        self.reset_state()

    def reset_state(self) -> None:
        """Forget the run's multistep memory (a new schedule, or a window that starts
        afresh, as a new ComfyUI sampler would)."""
        self.history = []
        if hasattr(self, "adams_reset"):  # SA-Solver's predictor/corrector memory
            self.adams_reset()

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index
        self.reset_state()

    #: the rule's step (``SigmaSampler``'s), its signature seen by the sampling loop
    step = SigmaSampler.step


class ContinuousStagedBase(ContinuousBase):
    """:class:`ContinuousBase` for several model calls a step, laid out as
    :class:`~nodes.diffusion.stage_samplers.StagedSampler` lays them out."""

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None,
                      sigmas: Any = None, **_: Any) -> None:
        levels = [float(s) for s in self.levels_for(num_inference_steps, sigmas)]
        self.levels = levels
        call_sigmas: list[float] = []
        self.plan: list[tuple[int, int]] = []
        for k in range(len(levels) - 1):
            sigma, sigma_next = levels[k], levels[k + 1]
            extra = self.stage_sigmas(sigma, sigma_next) if sigma_next > 0 else []
            call_sigmas += [sigma, *extra]
            self.plan += [(k, j) for j in range(len(extra) + 1)]
        calls = torch.tensor(call_sigmas, dtype=torch.float32)
        self.num_inference_steps = len(levels) - 1
        self.sigmas = torch.cat([calls, torch.tensor(levels[-1:], dtype=torch.float32)])
        self.timesteps = self.precondition_noise(calls).to(device=device)
        self._step_index = None
        self._begin_index = 0  # interleaved timesteps repeat: never look a call up by one
        self.reset_state()

    def reset_state(self) -> None:
        super().reset_state()
        self.reset()

    step = StagedSampler.step


# --- update rules ComfyUI has that diffusers' schedulers hold only for discrete models ----


class HeunSampler(StagedSampler):
    """``heun``: Euler to σ', the slope there, and the step again with the mean slope
    (the last step, to σ = 0, is Euler's)."""

    def stage_sigmas(self, sigma: float, sigma_next: float) -> list[float]:
        return [sigma_next]

    def advance(self, k: int, stage: int, sample: torch.Tensor,
                denoised: torch.Tensor) -> torch.Tensor:
        sigma, sigma_next = self.levels[k], self.levels[k + 1]
        if stage == 0:
            slope = (sample - denoised) / sigma
            self.state.update(x=sample, slope=slope)
            return sample + (sigma_next - sigma) * slope
        slope = (sample - denoised) / sigma_next
        return self.state["x"] + (sigma_next - sigma) * (self.state["slope"] + slope) / 2


class DPM2Sampler(StagedSampler):
    """``dpm_2``: the slope at the log-midpoint σ_m = √(σ·σ') carries the whole step."""

    ancestral = False

    def target(self, sigma: float, sigma_next: float) -> tuple[float, float]:
        return ancestral_sigmas(sigma, sigma_next, self.eta) if self.ancestral \
            else (sigma_next, 0.0)

    def stage_sigmas(self, sigma: float, sigma_next: float) -> list[float]:
        down, _ = self.target(sigma, sigma_next)
        return [math.sqrt(sigma * down)] if down > 0 else []

    def advance(self, k: int, stage: int, sample: torch.Tensor,
                denoised: torch.Tensor) -> torch.Tensor:
        sigma, sigma_next = self.levels[k], self.levels[k + 1]
        down, up = self.target(sigma, sigma_next)
        if stage == 0:
            slope = (sample - denoised) / sigma
            if down == 0:
                return sample + (down - sigma) * slope
            self.state["x"] = sample
            return sample + (math.sqrt(sigma * down) - sigma) * slope
        slope = (sample - denoised) / math.sqrt(sigma * down)
        out = self.state["x"] + (down - sigma) * slope
        return out + self.noise(out) * (up * self.s_noise) if up > 0 else out


class DPM2AncestralSampler(DPM2Sampler):
    """``dpm_2_ancestral``: DPM2 to σ_down, then fresh noise of σ_up."""

    ancestral = True


class DPMPP2SAncestralSampler(DPMPP2SAncestralCFGPPSampler):
    """``dpmpp_2s_ancestral``: DPM-Solver++(2S) ancestral (the CFG++ form's plain twin)."""

    cfg_pp = False


class LCMSampler(SigmaSampler):
    """``lcm``: each step lands on the model's x0, then fresh noise of σ' (ComfyUI's)."""

    def update(self, sample: torch.Tensor, now: Node, sigma_next: float) -> torch.Tensor:
        if sigma_next == 0:
            return now.denoised
        noise = randn_tensor(sample.shape, dtype=torch.float32, device=sample.device,
                             generator=getattr(self, "generator", None))
        return now.denoised + sigma_next * noise


_HERE = {cls.__name__: cls for cls in (HeunSampler, DPM2Sampler, DPM2AncestralSampler,
                                        DPMPP2SAncestralSampler, LCMSampler)}


def _rule(sampler_name: str) -> type:
    """The σ-space update class behind ``sampler_name`` (discrete base)."""
    from nodes.diffusion import sigma_samplers
    from nodes.diffusion.schedulers import _scheduler_class

    problem = continuous_sampler_problem(sampler_name)
    if problem:
        raise ValueError(problem)
    name = OWN_CONTINUOUS.get(sampler_name)
    if name is None:
        return _scheduler_class(sampler_name)
    return _HERE.get(name) or getattr(sigma_samplers, name)


@functools.cache
def continuous_class(rule: type) -> type:
    """``rule`` (a SigmaSampler or StagedSampler subclass) on the continuous base."""
    base = ContinuousStagedBase if issubclass(rule, StagedSampler) else ContinuousBase
    namespace: dict[str, Any] = {"order": rule.order, "__module__": __name__,
                                 "__doc__": f"{rule.__doc__}\n\nOn a continuous-σ model."}
    own_configure = getattr(rule, "configure", None)
    if own_configure is not None:
        def configure(self: Any, *args: Any, **kwargs: Any) -> Any:
            target = own_configure(self, *args, **kwargs)
            if not isinstance(target, ContinuousBase):  # SA-Solver's PEC <-> PECE switch
                raise ValueError("sa_solver: switching between PEC and PECE (use_pece) is not "
                                 "supported on a continuous-σ model; pick sa_solver or "
                                 "sa_solver_pece by name instead")
            return target

        namespace["configure"] = functools.wraps(own_configure)(configure)
    return type(f"Continuous{rule.__name__}", (base, rule), namespace)


def make_continuous_scheduler(sampler_name: str, schedule: str | None,
                              config: dict[str, Any], seed: int | None = None) -> Any:
    """A fresh scheduler for a continuous-σ model's run: ``sampler_name``'s update on
    :class:`ContinuousBase`, its ``set_timesteps(steps)`` on ComfyUI's ``schedule`` over the
    model's σ range (None: explicit σ lists only, given to ``set_timesteps``)."""
    from nodes.diffusion.schedulers import with_sigma_list

    cls = continuous_class(_rule(sampler_name))
    spec = continuous_spec(config)
    if spec is None:
        raise ValueError("not a continuous-σ model's scheduler config")
    if schedule is not None:
        continuous_sigmas(schedule, 1, spec)  # an unknown schedule: its error now
    scheduler = cls.from_config({k: v for k, v in config.items() if k in CONFIG_KEYS})
    del seed  # the noise of every sampler here comes from the run's generator
    if schedule is None:
        return scheduler
    return with_sigma_list(scheduler, lambda steps: continuous_sigmas(schedule, steps, spec))


def model_sigma_table(scheduler: ContinuousBase) -> list[float]:
    """ComfyUI's σ table of the model (lowest first): its training noise levels."""
    return scheduler.spec.table()


# --- latent format (Playground v2.5) -----------------------------------------------------


def _stats(fmt: dict[str, Any], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    channels = like.shape[1]
    mean = torch.tensor(fmt["mean"], dtype=like.dtype, device=like.device)
    std = torch.tensor(fmt["std"], dtype=like.dtype, device=like.device)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"the model's latent format has {len(mean)} channels but the latent "
                         f"has {channels}: use this model with its own VAE's latents")
    return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)


def to_model_latents(config: dict[str, Any], samples: torch.Tensor,
                     vae_scale: float | None) -> torch.Tensor:
    """LATENT samples (the VAE's raw latents z times its scaling factor ``vae_scale``) →
    the model's space, ``(z − mean)·scale/std`` (ComfyUI's ``process_in``)."""
    fmt = latent_format(config)
    if fmt is None:
        return samples
    mean, std = _stats(fmt, samples)
    raw = samples / float(vae_scale or fmt.get("vae_scale", 0.13025))
    return (raw - mean) * float(fmt["scale"]) / std


def from_model_latents(model: Any, latent: Any, samples: torch.Tensor) -> torch.Tensor:
    """Sampled latents in the model's space → ``latent``'s (the inverse of
    :func:`to_model_latents`, ComfyUI's ``process_out``)."""
    fmt = latent_format(model.scheduler_config)
    if fmt is None:
        return samples
    mean, std = _stats(fmt, samples)
    raw = samples * std / float(fmt["scale"]) + mean
    return raw * float(vae_scale(model, latent) or fmt.get("vae_scale", 0.13025))


def vae_scale(model: Any, latent: Any) -> float | None:
    """The VAE scaling factor ``latent``'s samples carry (its own, else the model's VAE's)."""
    return getattr(latent, "scaling_factor", None) or getattr(model, "latent_scale", None)


def model_space_latent(model: Any, latent: Any) -> Any:
    """``latent`` with its samples in the model's latent space (a model with a latent format,
    Playground v2.5's; others: ``latent`` itself)."""
    from dataclasses import replace

    if latent_format(model.scheduler_config) is None:
        return latent
    return replace(latent, samples=to_model_latents(model.scheduler_config, latent.samples,
                                                    vae_scale(model, latent)))
