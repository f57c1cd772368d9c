"""KSamplerAdvanced: a window of the schedule, with or without adding noise first.

The same sampling loop as KSampler. A latent handed between samplers with
leftover noise (``return_with_leftover_noise``, or DDIM inversion) is in the
variance-preserving space the UNet sees, whatever the sampler, so stages may use
different samplers. Multistep samplers (DPM++ 2M, UniPC, ...) start their history
afresh in each stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.extensions import SamplerExtension, Step, UNetCall
from nodes.diffusion.handles import Conditioning, DiffusionModel, Latent
from nodes.diffusion.schedulers import SAMPLERS, SCHEDULES, make_scheduler
from nodes.sampling import sampler_problems, step_reporter

if TYPE_CHECKING:
    import torch

ENABLE = ("enable", "disable")
MAX_STEP = 10000


class FinalDenoise(SamplerExtension):
    """At the window's last step, keep the step's x̂₀ (ComfyUI's force_full_denoise: the
    last step goes to noise level 0). Made per run; the result lands in ``result``."""

    priority = 950  # after every post-step change

    def __init__(self) -> None:
        self.result: dict[str, torch.Tensor] = {}

    def unet_inputs(self, run: Any, step: Step, call: UNetCall) -> None:
        from nodes.diffusion.sampling import model_input_scale

        if step.index == step.total - 1:
            batch = run.init_latents.shape[0]
            run.state[self] = (call.latent_input[:batch],
                               model_input_scale(run.scheduler, step.timestep))

    def post_step(self, run: Any, step: Step, latents: torch.Tensor) -> torch.Tensor:
        from nodes.diffusion.denoised import predicted_original

        if step.index == step.total - 1 and step.prediction is not None:
            model_input, scale = run.state[self]
            self.result["x0"] = predicted_original(run.scheduler, step.timestep, model_input,
                                                   step.prediction, scale)
        return latents

    def teardown(self, run: Any) -> None:
        run.state.pop(self, None)


class KSamplerAdvanced(Node):
    """Sample steps ``start_at_step`` to ``end_at_step`` of a ``steps``-step schedule.

    ``add_noise`` disable: the latent is already noisy at ``start_at_step`` (from a
    previous stage with leftover noise, or DDIM inversion). Otherwise it is noised
    there with ``noise_seed`` (pure noise at step 0, as KSampler).
    ``return_with_leftover_noise`` disable ends a shortened window on the last
    step's prediction of the clean latent.
    """

    TYPE = "KSamplerAdvanced"
    DISPLAY_NAME = "Sample (Advanced)"
    CATEGORY = "sampling"
    OUTPUTS = (Output("LATENT"),)

    model: DiffusionModel = Input(type="MODEL")
    add_noise: str = Input("enable", choices=ENABLE)
    noise_seed: int = Input(0, min=0, max=2**64 - 1, control_after_generate=True)
    steps: int = Input(20, min=1, max=10000)
    cfg: float = Input(8.0, min=0.0, max=100.0, step=0.1)
    sampler_name: str = Input("euler", choices=tuple(SAMPLERS))
    scheduler: str = Input("normal", choices=tuple(SCHEDULES))
    positive: Conditioning = Input(type="CONDITIONING")
    negative: Conditioning = Input(type="CONDITIONING")
    latent_image: Latent = Input(type="LATENT")
    start_at_step: int = Input(0, min=0, max=MAX_STEP)
    end_at_step: int = Input(MAX_STEP, min=0, max=MAX_STEP)
    return_with_leftover_noise: str = Input("disable", choices=ENABLE)

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return sampler_problems(inputs)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        from nodes.diffusion.sampling import SamplingParams, sample

        end = min(self.end_at_step, self.steps)
        if self.start_at_step >= end:
            return (self.latent_image,)  # an empty window leaves the latent as it is
        stops_early = end < self.steps
        params = SamplingParams(seed=self.noise_seed, steps=self.steps, cfg=self.cfg,
                                start_step=self.start_at_step,
                                end_step=end if stops_early else None,
                                add_noise=self.add_noise == "enable")
        model = self.model
        final = None
        if stops_early and self.return_with_leftover_noise == "disable":
            final = FinalDenoise()
            model = model.with_extension(final)  # a handle for this run only
        scheduler = make_scheduler(self.sampler_name, self.scheduler, model.scheduler_config,
                                   seed=self.noise_seed)
        ctx.check_interrupt()
        results: dict[str, torch.Tensor] = {}
        samples = sample(model, scheduler, self.positive, self.negative, self.latent_image,
                         params, callback=step_reporter(ctx, model), results=results)
        if final is not None:
            samples = self._keep_unmasked(final.result["x0"])
        return (self.latent_image.sampled(model, samples, results),)

    def _keep_unmasked(self, x0: torch.Tensor) -> torch.Tensor:
        """The noise mask's kept region is the input latent itself once fully denoised."""
        from nodes.diffusion.masking import mask_to_latent, match_batch

        latent = self.latent_image
        if latent.noise_mask is None:
            return x0
        init = latent.samples.to(device=x0.device, dtype=x0.dtype)
        mask = mask_to_latent(latent.noise_mask, tuple(init.shape[-2:]))
        mask = match_batch(mask, init.shape[0], "noise mask").to(device=x0.device,
                                                                 dtype=x0.dtype)
        return (1 - mask) * init + mask * x0


NODE_CLASSES = (KSamplerAdvanced,)
