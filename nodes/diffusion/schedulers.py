"""Sampler and schedule names (ComfyUI's vocabulary) mapped onto diffusers schedulers.

``sampler_name`` picks the diffusers scheduler class; ``scheduler`` picks how the
noise levels are spaced. "normal" keeps the checkpoint's own scheduler config,
which is what diffusers' pipelines do, so "normal" reproduces them exactly.

Nothing here imports diffusers until a scheduler is built: validating a workflow
checks sampler/schedule pairs against :data:`SCHEDULE_OPTIONS`, a static copy of
what the scheduler classes accept (a test compares it with diffusers').
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
from collections.abc import Callable
from typing import Any

# sampler_name -> (diffusers class name, extra config)
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    "dpmpp_2m_sde": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
    ),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),
    # ComfyUI's GPU-noise variants: the same samplers here (our noise is always CPU-seeded)
    "dpmpp_2m_sde_gpu": ("DPMSolverMultistepScheduler",
                         {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "dpmpp_sde_gpu": ("DPMSolverSDEScheduler", {}),
    # DPM-Solver++(2S) ancestral on KDPM2 ancestral's two-call layout (sigma_samplers)
    "dpmpp_2s_ancestral": ("DPMPP2SAncestralScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "uni_pc": ("UniPCMultistepScheduler", {}),
    "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
    "deis": ("DEISMultistepScheduler", {}),
    # latent consistency: a few steps, each to x0 (with LCM's boundary condition) and back
    "lcm": ("LCMScheduler", {}),
    "dpmpp_3m_sde": ("DPMSolverMultistepScheduler",
                     {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "dpmpp_3m_sde_gpu": ("DPMSolverMultistepScheduler",
                         {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "dpmpp_2m_sde_heun": ("DPMSolverMultistepScheduler",
                          {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                           "solver_type": "heun"}),
    "dpmpp_2m_sde_heun_gpu": ("DPMSolverMultistepScheduler",
                              {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                               "solver_type": "heun"}),
    # σ-space samplers diffusers lacks: Euler's scheduler with their update rules
    # (nodes.diffusion.sigma_samplers)
    "euler_cfg_pp": ("EulerCFGPPSampler", {}),
    "euler_ancestral_cfg_pp": ("EulerAncestralCFGPPSampler", {}),
    # ComfyUI's "alternative" Euler CFG++ (SamplerEulerCFG++), not in its KSampler list
    "euler_pp": ("EulerPPSampler", {}),
    "ipndm": ("IPNDMSampler", {}),
    "ipndm_v": ("IPNDMVSampler", {}),
    "res_multistep": ("RESMultistepSampler", {}),
    "res_multistep_ancestral": ("RESMultistepAncestralSampler", {}),
    "gradient_estimation": ("GradientEstimationSampler", {}),
    "dpmpp_2m_cfg_pp": ("DPMPP2MCFGPPSampler", {}),
    "res_multistep_cfg_pp": ("RESMultistepCFGPPSampler", {}),
    "res_multistep_ancestral_cfg_pp": ("RESMultistepAncestralCFGPPSampler", {}),
    "gradient_estimation_cfg_pp": ("GradientEstimationCFGPPSampler", {}),
    # ER-SDE, SEEDS, SA-Solver and 2S CFG++ on Euler's scheduler; several model calls a
    # step interleaved as Heun's / KDPM2's (nodes.diffusion.stage_samplers)
    "er_sde": ("ERSDESampler", {}),
    "seeds_2": ("SEEDS2Sampler", {}),
    "seeds_3": ("SEEDS3Sampler", {}),
    "sa_solver": ("SASolverSampler", {}),
    "sa_solver_pece": ("SASolverPECESampler", {}),
    "dpmpp_2s_ancestral_cfg_pp": ("DPMPP2SAncestralCFGPPSampler", {}),
}

#: the samplers of :mod:`nodes.diffusion.sigma_samplers` and
#: :mod:`nodes.diffusion.stage_samplers` (class names): Euler's scheduler underneath
SIGMA_SAMPLERS = frozenset({
    "EulerCFGPPSampler", "EulerAncestralCFGPPSampler", "EulerPPSampler", "IPNDMSampler",
    "IPNDMVSampler", "RESMultistepSampler", "RESMultistepAncestralSampler",
    "GradientEstimationSampler", "DPMPP2MCFGPPSampler", "RESMultistepCFGPPSampler",
    "RESMultistepAncestralCFGPPSampler", "GradientEstimationCFGPPSampler",
    "ERSDESampler", "SEEDS2Sampler", "SEEDS3Sampler", "SASolverSampler",
    "SASolverPECESampler", "DPMPP2SAncestralCFGPPSampler"})
#: ours on another diffusers scheduler's layout (not Euler's: no custom σs)
OWN_SCHEDULERS = frozenset({"DPMPP2SAncestralScheduler"})

# scheduler -> extra config
SCHEDULES: dict[str, dict[str, Any]] = {
    "normal": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "simple": {"timestep_spacing": "trailing"},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "ddim_uniform": {"timestep_spacing": "leading"},
    "linspace": {"timestep_spacing": "linspace"},
    # σ lists (sigma_spacing), for the samplers that run custom σs (TAKES_SIGMAS)
    "kl_optimal": {},
    "linear_quadratic": {},
}

# Schedulers that take the diffusers-specific sigma options
_SIGMA_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
_ALL_OPTIONS = frozenset({"timestep_spacing", *_SIGMA_OPTIONS})

# diffusers class name -> the options of SCHEDULES its __init__ accepts (diffusers 0.42;
# tests/test_import_light.py checks this against the installed diffusers).
SCHEDULE_OPTIONS: dict[str, frozenset[str]] = {
    "EulerDiscreteScheduler": _ALL_OPTIONS,
    "EulerAncestralDiscreteScheduler": frozenset({"timestep_spacing"}),
    "HeunDiscreteScheduler": _ALL_OPTIONS,
    "KDPM2DiscreteScheduler": _ALL_OPTIONS,
    "KDPM2AncestralDiscreteScheduler": _ALL_OPTIONS,
    "LMSDiscreteScheduler": _ALL_OPTIONS,
    "DPMSolverMultistepScheduler": _ALL_OPTIONS,
    "DPMSolverSDEScheduler": _ALL_OPTIONS,
    "DPMPP2SAncestralScheduler": _ALL_OPTIONS,  # KDPM2 ancestral's
    "DDIMScheduler": frozenset({"timestep_spacing"}),
    "DDPMScheduler": frozenset({"timestep_spacing"}),
    "PNDMScheduler": frozenset({"timestep_spacing"}),
    "UniPCMultistepScheduler": _ALL_OPTIONS,
    "DEISMultistepScheduler": _ALL_OPTIONS,
    "LCMScheduler": frozenset({"timestep_spacing"}),
    **dict.fromkeys(SIGMA_SAMPLERS, _ALL_OPTIONS),  # Euler's scheduler underneath
}


#: diffusers class names whose ``set_timesteps`` runs a custom σ list
TAKES_SIGMAS = frozenset({"EulerDiscreteScheduler", *SIGMA_SAMPLERS})
#: samplers whose diffusers scheduler takes no σ list but that have a σ-space twin in
#: :mod:`nodes.diffusion.sigma_samplers` (checked equal on the same σs): explicit σ
#: lists and the σ-list schedules run the twin
SIGMA_TWINS = {
    "dpmpp_2m": "DPMPP2MSampler",
    "dpmpp_2m_sde": "DPMPP2MSDESampler", "dpmpp_2m_sde_gpu": "DPMPP2MSDESampler",
    "dpmpp_2m_sde_heun": "DPMPP2MSDEHeunSampler",
    "dpmpp_2m_sde_heun_gpu": "DPMPP2MSDEHeunSampler",
    "euler_ancestral": "EulerAncestralSampler",
    # DDIM (η = 0) is Euler's step in σ (ComfyUI's ddim is its euler); LCM's step is
    # x0 then fresh noise
    "ddim": "EulerSampler",
    "lcm": "LCMSampler",
}


def runs_sigma_lists(sampler_name: str) -> bool:
    """Whether ``sampler_name`` runs explicit σ lists (itself or through its twin)."""
    return sampler_name in SIGMA_TWINS or (
        sampler_name in SAMPLERS and SAMPLERS[sampler_name][0] in TAKES_SIGMAS)


def runs_twin(sampler_name: str, schedule: str) -> bool:
    """Whether :func:`make_scheduler` runs the pair on the sampler's σ-space twin rather
    than its diffusers class (a σ list, or a σ spacing that class lacks)."""
    if sampler_name not in SIGMA_TWINS or schedule not in SCHEDULES:
        return False
    if schedule in SIGMA_SPACINGS:
        return True
    accepted = SCHEDULE_OPTIONS[SAMPLERS[sampler_name][0]]
    return any(key in _SIGMA_OPTIONS and key not in accepted for key in SCHEDULES[schedule])


def kl_optimal_sigmas(steps: int, sigma_min: float, sigma_max: float) -> list[float]:
    """The KL-optimal schedule (Sabour et al. 2024, "Align Your Steps"): σ evenly spaced
    in ``atan σ`` from σ_max to σ_min, then 0."""
    import math

    top, bottom = math.atan(sigma_max), math.atan(sigma_min)
    if steps == 1:
        return [sigma_max, 0.0]
    return [math.tan(top + (bottom - top) * i / (steps - 1)) for i in range(steps)] + [0.0]


def linear_quadratic_sigmas(steps: int, sigma_min: float, sigma_max: float,
                            threshold: float = 0.025) -> list[float]:
    """Mochi's linear-quadratic schedule (ComfyUI's ``linear_quadratic``), as a fraction
    of σ_max: the first half of the steps falls linearly from 1 to ``1 − threshold``, the
    rest follows the quadratic that continues it smoothly (same value and slope) to 0."""
    if steps == 1:
        return [sigma_max, 0.0]
    linear = steps // 2
    slope = threshold / linear
    rest = steps - linear
    # q(i) = 1 − threshold − slope·(i − L) − a·(i − L)², q(N) = 0
    a = (1 - threshold - slope * rest) / rest ** 2
    fractions = [1 - slope * i for i in range(linear)]
    fractions += [1 - threshold - slope * (i - linear) - a * (i - linear) ** 2
                  for i in range(linear, steps)]
    return [f * sigma_max for f in fractions] + [0.0]


#: schedule name -> σ list of (steps, σ_min, σ_max)
SIGMA_SPACINGS = {"kl_optimal": kl_optimal_sigmas, "linear_quadratic": linear_quadratic_sigmas}


def training_sigmas(scheduler: Any) -> list[float]:
    """σ at each of a scheduler's training timesteps, ``√((1 − ᾱ)/ᾱ)``, lowest first."""
    import numpy as np

    table = getattr(scheduler, "spec", None)  # a continuous-σ model: ComfyUI's σ table
    if table is not None:
        return table.table()
    alphas = np.asarray(scheduler.alphas_cumprod, dtype=np.float64)
    return (((1 - alphas) / alphas) ** 0.5).tolist()


def model_sigma_range(scheduler: Any) -> tuple[float, float]:
    """(σ_min, σ_max) of a scheduler's training noise levels."""
    sigmas = training_sigmas(scheduler)
    return sigmas[0], sigmas[-1]


def with_sigma_list(scheduler: Any, sigmas_for: Callable[[int], list[float]],
                    reference: Any = None) -> Any:
    """``scheduler`` (one of :data:`TAKES_SIGMAS`) whose ``set_timesteps(steps)`` runs the
    σ list ``sigmas_for(steps)`` (custom timesteps or σs still pass straight through).
    With ``reference`` (a scheduler ``sigmas_for`` just set) the model also gets its
    timesteps, not ones derived again from the σs rounded to float32."""
    own = scheduler.set_timesteps

    def set_timesteps(num_inference_steps: int | None = None, device: Any = None,
                      **kwargs: Any) -> None:
        if num_inference_steps is None or kwargs.get("timesteps") is not None \
                or kwargs.get("sigmas") is not None:
            own(num_inference_steps, device, **kwargs)
            return
        own(device=device, sigmas=sigmas_for(int(num_inference_steps)))
        if reference is not None:
            scheduler.timesteps = reference.timesteps.to(scheduler.timesteps.device)

    scheduler.set_timesteps = set_timesteps
    scheduler.runs_sigma_list = True  # its σs are not tied to the model's timesteps
    return scheduler


def sigma_list_problem(sampler_name: str) -> str | None:
    """Why ``sampler_name`` cannot run an explicit σ list, or None."""
    if sampler_name not in SAMPLERS:
        return f"unknown sampler {sampler_name!r}"
    if runs_sigma_lists(sampler_name):
        return None
    return (f"sampler {sampler_name!r} cannot run an explicit σ list (its diffusers "
            f"scheduler runs no custom σs); use one of: {_sigma_list_samplers()}")


def _sigma_list_samplers() -> str:
    return ", ".join(name for name in SAMPLERS if runs_sigma_lists(name))


def make_sigma_list_scheduler(sampler_name: str, config: dict[str, Any],
                              seed: int | None = None) -> Any:
    """A fresh scheduler for ``sampler_name`` that can run a σ list: its own, or its
    σ-space twin (:data:`SIGMA_TWINS`) built on the same config."""
    if _continuous(config):  # a continuous-σ model (nodes.diffusion.continuous_samplers)
        from nodes.diffusion.continuous_samplers import make_continuous_scheduler

        return make_continuous_scheduler(sampler_name, None, config, seed=seed)
    if sampler_name in SAMPLERS and SAMPLERS[sampler_name][0] in TAKES_SIGMAS:
        return make_scheduler(sampler_name, "normal", config, seed=seed)
    if sampler_name not in SIGMA_TWINS:
        raise ValueError(sigma_list_problem(sampler_name))
    from nodes.diffusion import sigma_samplers

    base = make_scheduler("euler", "normal", config)  # the config as Euler reads it
    return getattr(sigma_samplers, SIGMA_TWINS[sampler_name]).from_config(base.config)


def _scheduler_class(sampler_name: str) -> type:
    class_name, _ = SAMPLERS[sampler_name]
    if class_name in SIGMA_SAMPLERS or class_name in OWN_SCHEDULERS:
        from nodes.diffusion import sigma_samplers, stage_samplers

        return getattr(sigma_samplers, class_name, None) or getattr(stage_samplers, class_name)
    import diffusers  # imports torch: only when a scheduler is built

    return getattr(diffusers, class_name)


def unsupported_combination(sampler_name: str, schedule: str) -> str | None:
    """Why a sampler/schedule pair cannot be built, or None if it can."""
    if sampler_name not in SAMPLERS:
        return f"unknown sampler {sampler_name!r}"
    if schedule not in SCHEDULES:
        return f"unknown scheduler {schedule!r}"
    class_name = SAMPLERS[sampler_name][0]
    if schedule in SIGMA_SPACINGS:
        if runs_sigma_lists(sampler_name):
            return None
        return (f"sampler {sampler_name!r} does not support the {schedule!r} schedule (its "
                f"diffusers scheduler runs no custom σ list); use one of: "
                f"{_sigma_list_samplers()}")
    accepted = SCHEDULE_OPTIONS[class_name]
    for key in SCHEDULES[schedule]:
        if key in _SIGMA_OPTIONS and sampler_name in SIGMA_TWINS:
            continue  # its twin runs the spacing's σs (as Euler spaces them)
        if key not in accepted:
            return (
                f"sampler {sampler_name!r} does not support the {schedule!r} schedule "
                f"(it has no {key!r} option)"
            )
    return None


def validation_problem(sampler_name: str, schedule: str) -> str | None:
    """What prompt validation (which cannot see the model) refuses: a pair no model can
    run. A pair only a continuous-σ model runs (its σ-space samplers take every schedule,
    e.g. euler_ancestral + karras) passes, and a discrete model refuses it at run time
    (:func:`make_scheduler`, the same message)."""
    from nodes.diffusion.continuous import CONTINUOUS_SCHEDULES, continuous_sampler_problem

    problem = unsupported_combination(sampler_name, schedule)
    if (problem is not None and sampler_name in SAMPLERS and schedule in CONTINUOUS_SCHEDULES
            and continuous_sampler_problem(sampler_name) is None):
        return None
    return problem


def _continuous(config: dict[str, Any]) -> bool:
    from nodes.diffusion.continuous import is_continuous

    return is_continuous(config)


def make_scheduler(sampler_name: str, schedule: str, base_config: dict[str, Any],
                   seed: int | None = None) -> Any:
    """A fresh diffusers scheduler for one sampling run.

    ``seed`` seeds the Brownian-tree noise of ``dpmpp_sde`` (diffusers'
    ``DPMSolverSDEScheduler`` draws its tree's seed from the global RNG otherwise, so the
    same seed would give another image each run)."""
    if _continuous(base_config):  # a continuous-σ model: ComfyUI's σs over its range
        from nodes.diffusion.continuous_samplers import make_continuous_scheduler

        return make_continuous_scheduler(sampler_name, schedule, base_config, seed=seed)
    problem = unsupported_combination(sampler_name, schedule)
    if problem:
        if validation_problem(sampler_name, schedule) is None:
            problem += (" (on this discrete model; Model Sampling Continuous EDM / V models "
                        "run the pair)")
        raise ValueError(problem)
    if schedule in SIGMA_SPACINGS:  # a σ list: run by the sampler or its σ-space twin
        scheduler = make_sigma_list_scheduler(sampler_name, base_config, seed)
        sigma_min, sigma_max = model_sigma_range(scheduler)
        spacing = SIGMA_SPACINGS[schedule]
        return with_sigma_list(scheduler, lambda n: spacing(n, sigma_min, sigma_max))
    cls = _scheduler_class(sampler_name)
    if runs_twin(sampler_name, schedule):
        # e.g. euler_ancestral + karras, ComfyUI's common pair: diffusers' class has no
        # such spacing, so its twin runs the σs Euler's scheduler spaces that way
        spaced = make_scheduler("euler", schedule, base_config)

        def spaced_sigmas(steps: int) -> list[float]:
            spaced.set_timesteps(steps)
            return [float(sigma) for sigma in spaced.sigmas]

        return with_sigma_list(make_sigma_list_scheduler(sampler_name, base_config, seed),
                               spaced_sigmas, reference=spaced)
    _, sampler_extra = SAMPLERS[sampler_name]
    config = dict(base_config)
    if any(key in _SIGMA_OPTIONS for key in SCHEDULES[schedule]):
        # one sigma spacing at a time: the checkpoint's own choice gives way
        for key in _SIGMA_OPTIONS:
            config.pop(key, None)
    accepts = inspect.signature(cls.__init__).parameters
    if config.get("rescale_betas_zero_snr") and "rescale_betas_zero_snr" not in accepts:
        takes = sorted(name for name, (class_name, _) in SAMPLERS.items() if
                       "rescale_betas_zero_snr" in inspect.signature(
                           _scheduler_class(name).__init__).parameters)
        raise ValueError(f"sampler {sampler_name!r} cannot run a zero-terminal-SNR model "
                         f"(Model Sampling Discrete's zsnr): use {', '.join(takes)}")
    if seed is not None and "noise_sampler_seed" in accepts:
        config["noise_sampler_seed"] = int(seed)
    return _fresh(cls, {**config, **sampler_extra, **SCHEDULES[schedule]})


def _fresh(cls: type, config: dict[str, Any]) -> Any:
    """``cls.from_config(config)``, as a copy of one built before with the same config:
    KDPM2's schedulers lay out a 1000-step schedule when built (~0.2 s each time)."""
    try:
        key = json.dumps(config, sort_keys=True)  # diffusers' configs are JSON
    except (TypeError, ValueError):  # a value JSON cannot say: build it afresh
        return cls.from_config(config)
    return copy.deepcopy(_prototype(cls, key))


@functools.lru_cache(maxsize=32)
def _prototype(cls: type, config_json: str) -> Any:
    return cls.from_config(json.loads(config_json))
