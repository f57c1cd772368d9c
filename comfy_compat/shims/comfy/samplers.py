"""ComfyUI's ``comfy.samplers``, as far as packs use it without running a model: the
sampler and scheduler names.

Packs build their own sampler widgets from ``comfy.samplers.KSampler.SAMPLERS`` and
``.SCHEDULERS`` (or ``SAMPLER_NAMES`` / ``SCHEDULER_NAMES``). These are Steerflow's
own lists, the ones its ``KSampler`` node accepts (:mod:`nodes.diffusion.schedulers`),
so a value a pack's widget offers is one Steerflow's samplers run. ComfyUI's sampler
objects (``KSAMPLER``, ``CFGGuider``, ``sampler_object``, ``calculate_sigmas``, ...)
are internals: naming one raises an ``AttributeError`` that says so.
"""

from __future__ import annotations

from comfy_compat.shims._missing import missing_attributes
from nodes.diffusion.schedulers import SAMPLERS as _SAMPLERS
from nodes.diffusion.schedulers import SCHEDULES as _SCHEDULES

SAMPLER_NAMES: list[str] = list(_SAMPLERS)
SCHEDULER_NAMES: list[str] = list(_SCHEDULES)
KSAMPLER_NAMES: list[str] = list(SAMPLER_NAMES)


class KSampler:
    """Only the class attributes packs read: ``SAMPLERS``, ``SCHEDULERS``,
    ``DISCARD_PENULTIMATE_SIGMA_SAMPLERS``. Instances are not provided."""

    SAMPLERS: list[str] = SAMPLER_NAMES
    SCHEDULERS: list[str] = SCHEDULER_NAMES
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS: set[str] = {"dpm_2", "dpm_2_ancestral", "uni_pc",
                                                    "uni_pc_bh2"}

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        raise NotImplementedError(
            "ComfyUI's comfy.samplers.KSampler objects are not available in Steerflow "
            "(its SAMPLERS and SCHEDULERS lists are); sample with Steerflow's KSampler node")


# ComfyUI's sampler objects, placeholders: KJNodes subclasses CFGGuider at its top
COMFY_NAMES = ("CFGGuider", "KSAMPLER", "KSamplerX0Inpaint", "Sampler", "sampling_function",
               "calc_cond_batch", "cfg_function", "sampler_object", "ksampler",
               "calculate_sigmas", "sample", "SCHEDULER_HANDLERS", "SchedulerHandler",
               "normal_scheduler", "simple_scheduler", "ddim_scheduler", "beta_scheduler",
               "kl_optimal_scheduler", "linear_quadratic_schedule", "process_conds",
               "encode_model_conds", "get_area_and_mult", "resolve_areas_and_cond_masks",
               "calculate_start_end_timesteps", "pre_run_control",
               "apply_empty_x_to_equal_area")
__getattr__ = missing_attributes(__name__, "ComfyUI's sampler objects are internals",
                                 COMFY_NAMES)
