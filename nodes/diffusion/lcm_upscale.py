"""SamplerLCMUpscale: the LCM sampler that enlarges its clean-latent estimate between steps
(ComfyUI's ``sample_lcm_upscale``).

Our ``lcm`` is diffusers' ``LCMScheduler``: each step takes the model's x0 with LCM's
boundary condition (``denoised``), then re-noises it to the next timestep,
``√ᾱ'·denoised + √(1 − ᾱ')·z``. Here ``denoised`` is first resized with
``upscale_method`` (``common_upscale``, bislerp included) at the first ``k`` steps of the
window, to ``round(side · u_j)`` for ``u = linspace(1, scale_ratio, k + 1)[1:]`` of the
window's input size, and the fresh noise is drawn at the new size; a step whose size does
not change is the plain ``lcm`` step, so ``scale_ratio`` 1 is exactly KSamplerSelect's
``lcm``. ``k`` is ``scale_steps`` (capped at the window's steps + 1, as ComfyUI), or
``(steps + 1) // 2 + 1`` − 1 with ``scale_steps`` −1.

The latent changes size during the run. The loop takes that (every UNet pass is built from
the step's latents), but techniques that keep per-size state made at the start (noise masks
and inpainting channels, ControlNet / T2I hints, GLIGEN boxes, MultiDiffusion windows,
attention hooks, area conditioning, momentum buffers) cannot: with one of them attached
the sampler refuses to run (:func:`check_size_free`), naming it. Explicit σ lists run no
``lcm`` here (diffusers' LCM runs timesteps only), as with KSamplerSelect's ``lcm``.

On a continuous-σ model (Model Sampling Continuous EDM / V) the run is that model's own
σ-space ``lcm`` (:class:`~nodes.diffusion.continuous_samplers.LCMSampler`: x0 from its
c_skip / c_out, then ``denoised + σ'·z``) with the same resize.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from diffusers import LCMScheduler
from diffusers.schedulers.scheduling_lcm import LCMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from nodes.diffusion.resize import common_upscale

METHODS = ("bislerp", "nearest-exact", "bilinear", "area", "bicubic")
#: the largest latent side a run may grow to (ComfyUI's 16384 px image bound / 8)
MAX_LATENT_SIDE = 2048
#: techniques whose state does not depend on the latent's size (class names)
SIZE_FREE = frozenset({"FinalDenoise", "RescaleCFG", "EpsilonScaling", "PerpNeg", "DualCFG",
                       "FreSca", "TemporalScoreRescaling", "HookedWeights"})


@dataclass(frozen=True)
class UpscaleOptions:
    """SamplerLCMUpscale's inputs (``scale_steps`` −1: ComfyUI's default count)."""

    scale_ratio: float = 1.0
    scale_steps: int = -1
    upscale_method: str = "bislerp"

    def check(self) -> None:
        if not 0.1 <= self.scale_ratio <= 20.0:
            raise ValueError(f"scale_ratio must be 0.1 to 20, not {self.scale_ratio:g}")
        if not -1 <= self.scale_steps <= 1000:
            raise ValueError(f"scale_steps must be -1 (automatic) to 1000, not "
                             f"{self.scale_steps}")
        if self.upscale_method not in METHODS:
            raise ValueError(f"upscale_method {self.upscale_method!r} is not one of "
                             f"{', '.join(METHODS)}")

    def factors(self, steps: int) -> list[float]:
        """The scale (of the window's input size) after each of the first steps of a
        ``steps``-step window."""
        levels = steps + 1  # ComfyUI counts the window's σs
        count = max(levels // 2 + 1, 2) if self.scale_steps < 0 else min(
            self.scale_steps + 1, levels + 1)
        return [float(u) for u in np.linspace(1.0, self.scale_ratio, count)[1:]]

    def sizes(self, height: int, width: int, steps: int) -> list[tuple[int, int]]:
        """(height, width) after each resizing step."""
        return [(round(height * u), round(width * u)) for u in self.factors(steps)[:steps]]


class _Resizes:
    """The resize plan of :class:`UpscaleOptions` over one window's steps."""

    upscale = UpscaleOptions()
    window_steps = 0

    def configure_upscale(self, options: UpscaleOptions, window_steps: int) -> Any:
        options.check()
        self.upscale, self.window_steps = options, int(window_steps)
        self._restart()
        return self

    def _restart(self) -> None:
        self.taken = 0  # steps taken in this window
        self.base_size: tuple[int, int] | None = None

    def target_size(self, k: int) -> tuple[int, int] | None:
        """The size step ``k`` of the window resizes to, or None."""
        if self.base_size is None:
            return None
        sizes = self.upscale.sizes(*self.base_size, self.window_steps)
        return sizes[k] if k < len(sizes) else None

    def next_size(self, sample: torch.Tensor) -> tuple[int, int] | None:
        """The size this step resizes ``sample``'s x0 to, or None (the plain step)."""
        if getattr(self, "taken", None) is None:
            self._restart()
        if self.base_size is None:
            self.base_size = (int(sample.shape[-2]), int(sample.shape[-1]))
        k, self.taken = self.taken, self.taken + 1
        size = self.target_size(k)
        return None if size is None or size == tuple(sample.shape[-2:]) else size


class LCMUpscaleScheduler(_Resizes, LCMScheduler):
    """diffusers' LCM with the resize of :class:`UpscaleOptions` between steps."""

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)
        self._restart()

    def set_begin_index(self, begin_index: int = 0) -> None:
        super().set_begin_index(begin_index)
        self._restart()

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True,
             **_: Any) -> LCMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        size = self.next_size(sample)
        if size is None:
            return super().step(model_output, timestep, sample, generator, return_dict)
        if self.step_index is None:
            self._init_step_index(timestep)
        index = self.step_index
        last = index == self.num_inference_steps - 1
        prev_t = self.timesteps[index + 1] if index + 1 < len(self.timesteps) else timestep
        alpha_prev = (self.alphas_cumprod[prev_t] if prev_t >= 0
                      else self.final_alpha_cumprod)
        steps = self.num_inference_steps
        self.num_inference_steps = index + 1  # the parent's last step: no noise drawn
        try:
            _, denoised = super().step(model_output, timestep, sample, generator,
                                       return_dict=False)
        finally:
            self.num_inference_steps = steps
        prev = common_upscale(denoised, size[1], size[0], self.upscale.upscale_method)
        if not last:
            noise = randn_tensor(prev.shape, generator=generator, device=prev.device,
                                 dtype=prev.dtype)
            prev = alpha_prev.sqrt() * prev + (1 - alpha_prev).sqrt() * noise
        if not return_dict:
            return prev, denoised
        return LCMSchedulerOutput(prev_sample=prev, denoised=denoised)


@functools.cache
def continuous_upscale_class(lcm: type) -> type:
    """``lcm`` (the continuous-σ ``lcm``, :class:`~nodes.diffusion.continuous_samplers.
    LCMSampler` on ``ContinuousBase``) with the resize: x0 resized, then fresh noise of σ'
    at the new size (ComfyUI's σ-space ``sample_lcm_upscale``)."""

    def reset_state(self: Any) -> None:
        lcm.reset_state(self)
        self._restart()

    def update(self: Any, sample: torch.Tensor, now: Any, sigma_next: float) -> torch.Tensor:
        size = self.next_size(sample)
        if size is None:
            return lcm.update(self, sample, now, sigma_next)
        resized = common_upscale(now.denoised, size[1], size[0], self.upscale.upscale_method)
        return lcm.update(self, resized, now._replace(denoised=resized), sigma_next)

    return type(f"{lcm.__name__}Upscale", (_Resizes, lcm),
                {"reset_state": reset_state, "update": update, "__module__": __name__})


def lcm_upscale_scheduler(made: Any, options: UpscaleOptions, steps: int) -> Any:
    """The run's scheduler from ``made``, the schedule's ``lcm`` (discrete: diffusers'
    LCMScheduler; continuous-σ: its σ-space LCM, which keeps ``made``'s σ spacing)."""
    from nodes.diffusion.continuous_samplers import ContinuousBase

    if isinstance(made, ContinuousBase):
        made.__class__ = continuous_upscale_class(type(made))  # adds methods only
        return made.configure_upscale(options, steps)
    if not isinstance(made, LCMScheduler):  # lcm's σ-space twin: a σ spacing or list
        raise ValueError(
            "SamplerLCMUpscale on this discrete model runs diffusers' LCM schedule, which has "
            "no σ spacing (karras, exponential, beta) or explicit σ list: use the normal, "
            "simple, sgm_uniform, ddim_uniform or linspace schedule")
    return LCMUpscaleScheduler.from_config(made.config).configure_upscale(options, steps)


def check_size_free(extensions: Sequence[Any]) -> None:
    """Refuse techniques whose per-run state is made for the input latent's size."""
    held = sorted({type(ext).__name__ for ext in extensions
                   if type(ext).__name__ not in SIZE_FREE})
    if held:
        raise ValueError(
            f"SamplerLCMUpscale changes the latent's size between steps, which "
            f"{', '.join(held)} cannot follow (made for the input's size): remove them, or "
            f"sample with lcm and upscale the latent between two samplers")


def check_sizes(unet: Any, latent: torch.Tensor, sizes: Sequence[tuple[int, int]],
                rows: int) -> None:
    """Every size the run goes through must be one the UNet can take and fit in memory."""
    from nodes.diffusion.sampling import check_latent_size, check_unet_fits

    for height, width in sizes:
        if min(height, width) < 1 or max(height, width) > MAX_LATENT_SIDE:
            raise ValueError(
                f"SamplerLCMUpscale would resize the {latent.shape[-1]}x{latent.shape[-2]} "
                f"latent to {width}x{height}: each side must be 1 to {MAX_LATENT_SIDE}; "
                f"change scale_ratio")
        check_latent_size(unet, (height, width))
    if sizes:
        height, width = max(sizes, key=lambda s: s[0] * s[1])
        probe = torch.empty((1, 1, 1, 1), device=latent.device, dtype=latent.dtype)
        check_unet_fits(unet, probe.expand(latent.shape[0], latent.shape[1], height, width),
                        rows)


def run_lcm_upscale(ctx: Any, guider: Any, noise: Any, options: UpscaleOptions,
                    schedule: Any, latent: Any) -> tuple[Any, Any]:
    """SamplerCustom's run with SamplerLCMUpscale: (output, denoised_output)."""
    from nodes.diffusion.sampling import collect_extensions, sample
    from nodes.sampling import step_reporter
    from nodes.sampling_advanced import FinalDenoise

    options.check()
    if latent.noise_mask is not None:
        raise ValueError("SamplerLCMUpscale cannot sample a latent with a noise mask (the "
                         "mask is for the input's size, the latent grows): remove it")
    final = FinalDenoise()
    model = guider.model.with_extension(final)
    check_size_free(collect_extensions(model, guider.positive, guider.negative, latent))
    made = schedule.make_scheduler("lcm", seed=noise.seed)  # σ lists: an error that says so
    scheduler = lcm_upscale_scheduler(made, options, len(schedule))
    samples_in = latent.samples
    sizes = options.sizes(int(samples_in.shape[-2]), int(samples_in.shape[-1]), len(schedule))
    do_cfg = guider.cfg > 1.0 and model.unet.config.time_cond_proj_dim is None
    check_sizes(model.unet, samples_in.to(model.unet.device), sizes, 3 if do_cfg else 2)
    params = schedule.params(noise.seed, guider.cfg, noise.add)
    ctx.check_interrupt()
    results: dict[str, torch.Tensor] = {}
    samples = sample(model, scheduler, guider.positive, guider.negative, latent, params,
                     callback=step_reporter(ctx, model), results=results)
    out = replace(latent, samples=samples, extension_results=tuple(results.items()))
    x0 = final.result.get("x0")
    return out, (out if x0 is None else replace(out, samples=x0))
