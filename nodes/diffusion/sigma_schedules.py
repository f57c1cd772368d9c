"""SIGMAS as a recipe: the schedule a custom sampler runs, kept exact.

ComfyUI passes SIGMAS as a tensor of noise levels. Here a SIGMAS value is a
:class:`SigmaSchedule`: a checkpoint's scheduler config, a spacing (KSampler's
``scheduler`` names) or custom timesteps, a step count, and the window of those
steps to run. SamplerCustom runs it through the same diffusers scheduler and loop as
KSampler / KSamplerAdvanced, so the two give the same latents (multistep samplers
keep their own state, which a tensor of sigmas could not carry);
:meth:`SigmaSchedule.sigmas` gives the noise levels for anyone who wants to look.

Importing this module imports neither torch nor diffusers.
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from nodes.diffusion.schedulers import (
    _SIGMA_OPTIONS,
    SAMPLERS,
    SCHEDULE_OPTIONS,
    _scheduler_class,
    make_scheduler,
    make_sigma_list_scheduler,
    sigma_list_problem,
    with_sigma_list,
)

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.sampling import SamplingParams

#: SDTurboScheduler's grid: ten steps, timesteps 999, 899, ..., 99 (ComfyUI's)
TURBO_GRID = tuple(range(999, 0, -100))
#: samplers whose diffusers scheduler lacks ``set_timesteps(timesteps=...)`` but that
#: :func:`set_custom_timesteps` sets up by hand
_BY_HAND = frozenset({"EulerAncestralDiscreteScheduler"})


def turbo_timesteps(steps: int, denoise: float) -> tuple[int, ...]:
    """ComfyUI's SDTurboScheduler: ``steps`` timesteps of the 10-step grid, starting
    ``10 - int(10 * denoise)`` steps down it (empty at denoise 0)."""
    first = len(TURBO_GRID) - int(len(TURBO_GRID) * denoise)
    return TURBO_GRID[first:first + steps]


def takes_custom_timesteps(sampler_name: str) -> bool:
    """Whether the sampler can run an arbitrary list of timesteps (imports diffusers)."""
    cls = _scheduler_class(sampler_name)
    return (cls.__name__ in _BY_HAND
            or "timesteps" in inspect.signature(cls.set_timesteps).parameters)


def custom_timesteps_problem(sampler_name: str) -> str | None:
    """Why ``sampler_name`` cannot run custom timesteps (SDTurboScheduler), or None."""
    if sampler_name not in SAMPLERS:
        return f"unknown sampler {sampler_name!r}"
    if takes_custom_timesteps(sampler_name):
        return None
    working = ", ".join(name for name in SAMPLERS if takes_custom_timesteps(name))
    return (f"sampler {sampler_name!r} cannot run SDTurboScheduler's timesteps (its diffusers "
            f"scheduler takes no custom timesteps); use one of: {working}")


def set_custom_timesteps(scheduler: Any, timesteps: tuple[int, ...],
                         device: torch.device | str | None) -> None:
    """``scheduler.set_timesteps`` for an explicit list of timesteps, with a final noise
    level 0. Euler Ancestral's diffusers scheduler takes no list: it is set up the way
    its own ``set_timesteps`` would do for these timesteps."""
    import numpy as np
    import torch

    if type(scheduler).__name__ in _BY_HAND:
        steps = np.array(timesteps, dtype=np.float32)
        sigmas = np.array(((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod) ** 0.5)
        sigmas = np.interp(steps, np.arange(0, len(sigmas)), sigmas)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        scheduler.num_inference_steps = len(timesteps)
        scheduler.timesteps = torch.from_numpy(steps).to(device=device)
        scheduler.sigmas = torch.from_numpy(sigmas)  # on the CPU, as diffusers keeps them
        scheduler._step_index = None
        scheduler._begin_index = None
        return
    if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise ValueError(f"{type(scheduler).__name__} takes no custom timesteps")
    scheduler.set_timesteps(timesteps=list(timesteps), device=device)


def is_stochastic(sampler_name: str) -> bool:
    """Whether a sampler adds fresh noise each step (ancestral, SDE, SEEDS, SA-Solver)."""
    return any(part in sampler_name for part in ("ancestral", "sde", "seeds", "sa_solver"))


def list_shape_problem(levels: tuple[float, ...]) -> str | None:
    """Why no sampler can step through ``levels``, or None: a step from no noise (a 0
    before the end) or a step that does not change the noise level."""
    if 0.0 in levels[:-1]:
        return ("the σ schedule has a noise level of 0 before its end, and a sampler cannot "
                "step from no noise: put 0 last (to unsample, type the levels rising from a "
                "small one, or flip a falling list with FlipSigmas)")
    if any(a == b for a, b in itertools.pairwise(levels)):
        return "two neighbouring noise levels of the σ schedule are equal: each step must " \
               "change the noise level"
    return None


def rising_list_problem(sampler_name: str, levels: tuple[float, ...]) -> str | None:
    """Why ``sampler_name`` cannot run a σ list that rises somewhere (FlipSigmas'
    unsampling), or None: a sampler that adds noise would need a negative variance."""
    if not any(b > a for a, b in itertools.pairwise(levels)):
        return None
    if not is_stochastic(sampler_name):
        return None
    working = ", ".join(name for name in SAMPLERS
                        if not is_stochastic(name) and sigma_list_problem(name) is None)
    return (f"sampler {sampler_name!r} adds noise at each step and cannot run a rising σ "
            f"schedule (FlipSigmas); use a deterministic one: {working}")


@dataclass(frozen=True)
class SigmaSchedule:
    """SIGMAS: steps ``[start, end)`` of a ``steps``-step schedule.

    ``scheduler`` is one of KSampler's schedule names, applied to ``scheduler_config``
    (the checkpoint's). ``timesteps``, when set, replaces the spacing with explicit
    timesteps (SDTurboScheduler; ``steps`` is their count); ``denoise`` < 1 then says
    they start below the top of the schedule, so the input latent is noised to the
    first of them instead of being replaced by noise. ``sigma_list`` (``steps + 1`` noise
    levels, the last 0: KarrasScheduler, AlignYourStepsScheduler, ...) replaces both, for
    the samplers that run custom σs; such a list comes without a config and is bound to
    the sampling model's by :meth:`for_model`.
    """

    scheduler_config: dict[str, Any] = field(repr=False)
    scheduler: str
    steps: int
    start: int = 0
    end: int | None = None
    timesteps: tuple[int, ...] | None = None
    denoise: float = 1.0
    sigma_list: tuple[float, ...] | None = None

    @property
    def stop(self) -> int:
        """The end of the window, at most ``steps``."""
        return self.steps if self.end is None else min(self.end, self.steps)

    def __len__(self) -> int:
        """How many steps the window runs (0: an empty window)."""
        return max(self.stop - self.start, 0)

    def split(self, step: int) -> tuple[SigmaSchedule, SigmaSchedule]:
        """ComfyUI's SplitSigmas: the first ``step`` steps of the window, and the rest."""
        middle = min(self.start + step, self.stop)
        return (replace(self, end=middle if middle < self.steps else None),
                replace(self, start=middle))

    def explicit(self) -> SigmaSchedule:
        """The same schedule as an explicit σ list (all ``steps + 1`` levels, the window
        kept), for the nodes that edit σs (SetFirstSigma, ExtendIntermediateSigmas)."""
        if self.sigma_list is not None:
            return self
        scheduler = self.make_scheduler("euler")
        if self.timesteps is None:
            scheduler.set_timesteps(self.steps, device="cpu")
        else:
            set_custom_timesteps(scheduler, self.timesteps, "cpu")
        return replace(self, scheduler="normal", timesteps=None,
                       sigma_list=tuple(float(s) for s in scheduler.sigmas))

    def for_model(self, scheduler_config: dict[str, Any]) -> SigmaSchedule:
        """An explicit σ list on the sampling model's noise schedule (its own, when it
        came from a model's schedule): ``denoise`` < 1 when the window starts below that
        σ_max (the input latent is then noised to the first level rather than replaced).
        Other schedules are returned as they are."""
        if self.sigma_list is None:
            return self
        from nodes.diffusion.schedulers import model_sigma_range

        config = dict(self.scheduler_config or scheduler_config)
        _, top = model_sigma_range(make_scheduler("euler", "normal", config))
        first = self.sigma_list[min(self.start, len(self.sigma_list) - 1)]
        denoise = 1.0 if first >= top * (1 - 1e-3) else min(max(first / top, 1e-6), 0.999)
        return replace(self, scheduler_config=config, denoise=denoise)

    def make_scheduler(self, sampler_name: str, seed: int | None = None) -> Any:
        """A fresh diffusers scheduler for ``sampler_name`` on this schedule."""
        if self.sigma_list is not None:
            problem = (sigma_list_problem(sampler_name) or list_shape_problem(self.sigma_list)
                       or rising_list_problem(sampler_name, self.sigma_list))
            if problem:
                raise ValueError(problem)
            config = {k: v for k, v in self.scheduler_config.items() if k not in _SIGMA_OPTIONS}
            sigmas = list(self.sigma_list)
            return with_sigma_list(make_sigma_list_scheduler(sampler_name, config, seed=seed),
                                   lambda _steps: sigmas)
        if self.timesteps is None:
            return make_scheduler(sampler_name, self.scheduler, self.scheduler_config, seed=seed)
        problem = custom_timesteps_problem(sampler_name)
        if problem:
            raise ValueError(problem)
        # explicit timesteps: no sigma spacing; "trailing" makes the first step's noise
        # scale diffusers' text-to-image one for schedules that start at the top
        config = {k: v for k, v in self.scheduler_config.items() if k not in _SIGMA_OPTIONS}
        if "timestep_spacing" in SCHEDULE_OPTIONS.get(SAMPLERS[sampler_name][0], ()):
            config["timestep_spacing"] = "trailing"
        return make_scheduler(sampler_name, "normal", config, seed=seed)

    def params(self, seed: int, cfg: float, add_noise: bool) -> SamplingParams:
        """The sampling loop's parameters for this window."""
        from nodes.diffusion.sampling import SamplingParams

        return SamplingParams(seed=seed, steps=self.steps, cfg=cfg, denoise=self.denoise,
                              start_step=self.start,
                              end_step=self.stop if self.stop < self.steps else None,
                              add_noise=add_noise, timesteps=self.timesteps,
                              explicit_sigmas=self.sigma_list is not None)

    def sigmas(self) -> torch.Tensor:
        """The window's noise levels as ComfyUI's SIGMAS tensor holds them: σ-space (Euler's
        scheduler on this spacing), ``len(self) + 1`` of them (none for an empty window),
        the last one the window's final target (0 at the end of the schedule)."""
        import torch

        if len(self) == 0:
            return torch.zeros(0)
        levels = self.explicit().sigma_list or ()
        return torch.tensor(levels[self.start:self.stop + 1], dtype=torch.float32)
