"""Sampler and schedule names (ComfyUI's vocabulary) mapped onto diffusers schedulers.

``sampler_name`` picks the diffusers scheduler class; ``scheduler`` picks how the
noise levels are spaced. "normal" keeps the checkpoint's own scheduler config,
which is what diffusers' pipelines do, so "normal" reproduces them exactly.

Nothing here imports diffusers until a scheduler is built: validating a workflow
checks sampler/schedule pairs against :data:`SCHEDULE_OPTIONS`, a static copy of
what the scheduler classes accept (a test compares it with diffusers').
"""

from __future__ import annotations

import inspect
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
    "dpmpp_2s_ancestral": (
        "DPMSolverSinglestepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "uni_pc": ("UniPCMultistepScheduler", {}),
    "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
    "deis": ("DEISMultistepScheduler", {}),
    # latent consistency: a few steps, each to x0 (with LCM's boundary condition) and back
    "lcm": ("LCMScheduler", {}),
}

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
    "DPMSolverSinglestepScheduler": frozenset(_SIGMA_OPTIONS),
    "DDIMScheduler": frozenset({"timestep_spacing"}),
    "DDPMScheduler": frozenset({"timestep_spacing"}),
    "PNDMScheduler": frozenset({"timestep_spacing"}),
    "UniPCMultistepScheduler": _ALL_OPTIONS,
    "DEISMultistepScheduler": _ALL_OPTIONS,
    "LCMScheduler": frozenset({"timestep_spacing"}),
}


def _scheduler_class(sampler_name: str) -> type:
    import diffusers  # imports torch: only when a scheduler is built

    class_name, _ = SAMPLERS[sampler_name]
    return getattr(diffusers, class_name)


def unsupported_combination(sampler_name: str, schedule: str) -> str | None:
    """Why a sampler/schedule pair cannot be built, or None if it can."""
    if sampler_name not in SAMPLERS:
        return f"unknown sampler {sampler_name!r}"
    if schedule not in SCHEDULES:
        return f"unknown scheduler {schedule!r}"
    accepted = SCHEDULE_OPTIONS[SAMPLERS[sampler_name][0]]
    for key in SCHEDULES[schedule]:
        if key not in accepted:
            return (
                f"sampler {sampler_name!r} does not support the {schedule!r} schedule "
                f"(it has no {key!r} option)"
            )
    return None


def make_scheduler(sampler_name: str, schedule: str, base_config: dict[str, Any],
                   seed: int | None = None) -> Any:
    """A fresh diffusers scheduler for one sampling run.

    ``seed`` seeds the Brownian-tree noise of ``dpmpp_sde`` (diffusers'
    ``DPMSolverSDEScheduler`` draws its tree's seed from the global RNG otherwise, so the
    same seed would give another image each run)."""
    problem = unsupported_combination(sampler_name, schedule)
    if problem:
        raise ValueError(problem)
    cls = _scheduler_class(sampler_name)
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
    return cls.from_config(config, **sampler_extra, **SCHEDULES[schedule])
