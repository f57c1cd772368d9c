"""The sampler node: denoise a latent under positive and negative conditioning."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import Conditioning, DiffusionModel, Latent
from nodes.diffusion.preview import latent_preview
from nodes.diffusion.schedulers import SAMPLERS, SCHEDULES, make_scheduler, validation_problem

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from nodes.diffusion.sampling import StepCallback


def sampler_problems(inputs: dict[str, Any]) -> list[tuple[str | None, str]]:
    """A validation issue when no model can run the sampler with the schedule (e.g. ddim +
    linspace); a pair only continuous-σ models run is refused at run time on others."""
    sampler, schedule = inputs.get("sampler_name"), inputs.get("scheduler")
    if sampler is None or schedule is None:  # linked (a KSampler Config node): at run time
        return []
    problem = validation_problem(sampler, schedule)
    return [("scheduler", problem)] if problem else []


def non_finite_message(step: int, total: int) -> str:
    """Why latents that turned NaN/inf come out black, and what to change."""
    return (f"the latents became NaN or infinite at step {step} of {total}, so the image "
            "will come out black: a half-precision model overflowing (run with --dtype "
            "bf16 or fp32), an extreme cfg, LoRA or guidance strength, or an input latent "
            "or mask that already held NaN")


def step_reporter(ctx: ExecutionContext, model: DiffusionModel) -> StepCallback:
    """Progress every step (which also honours interrupt), with a live latent preview
    when a client asked for previews, and a warning when the latents stop being finite
    (ComfyUI saves such images black without a word)."""
    import torch

    want_preview = bool(ctx.extra.get("preview"))
    warned = False

    def on_step(step: int, total: int, latents: torch.Tensor,
                denoised: Callable[[], torch.Tensor | None] | None = None) -> None:
        nonlocal warned
        if not warned and not bool(torch.isfinite(latents).all()):
            warned = True  # once per run: a NaN stays NaN
            ctx.warn(non_finite_message(step, total))
        # progress first: the first preview fits its latent->RGB map to the VAE (seconds on
        # a full-size one), which must not hold back the progress bar
        ctx.progress(step, total)
        if want_preview:
            # the step's x̂₀, as ComfyUI previews: the noisy latents look like confetti
            shown = denoised() if denoised is not None else None
            if shown is None or not bool(torch.isfinite(shown).all()):
                shown = latents
            ctx.preview(latent_preview(shown, model.family, model.unet))

    def warn(message: str) -> None:
        ctx.warn(message)

    on_step.warn = warn  # type: ignore[attr-defined]  # see StepCallback
    return on_step


class KSampler(Node):
    """Sample with classifier-free guidance.

    ``denoise`` < 1 starts from the input latent noised to that fraction of the
    schedule (diffusers' img2img ``strength``: 20 steps at 0.5 runs 10 steps).
    """

    TYPE = "KSampler"
    DISPLAY_NAME = "Sample"
    CATEGORY = "sampling"
    OUTPUTS = (Output("LATENT"),)

    model: DiffusionModel = Input(type="MODEL")
    seed: int = Input(0, min=0, max=2**64 - 1, control_after_generate=True,
                      description="Seed of the CPU generator for the initial noise")
    steps: int = Input(20, min=1, max=10000)
    cfg: float = Input(8.0, min=0.0, max=100.0, step=0.1,
                       description="Classifier-free guidance scale; <= 1 disables guidance")
    sampler_name: str = Input("euler", choices=tuple(SAMPLERS))
    scheduler: str = Input("normal", choices=tuple(SCHEDULES))
    positive: Conditioning = Input(type="CONDITIONING")
    negative: Conditioning = Input(type="CONDITIONING")
    latent_image: Latent = Input(type="LATENT")
    denoise: float = Input(1.0, min=0.0, max=1.0, step=0.01)

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return sampler_problems(inputs)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        from nodes.diffusion.sampling import SamplingParams, sample

        scheduler = make_scheduler(self.sampler_name, self.scheduler, self.model.scheduler_config,
                                   seed=self.seed)
        params = SamplingParams(seed=self.seed, steps=self.steps, cfg=self.cfg,
                                denoise=self.denoise)
        ctx.check_interrupt()
        results: dict[str, torch.Tensor] = {}
        samples = sample(self.model, scheduler, self.positive, self.negative,
                         self.latent_image, params, callback=step_reporter(ctx, self.model),
                         results=results)
        return (self.latent_image.sampled(self.model, samples, results),)


NODE_CLASSES = (KSampler,)
