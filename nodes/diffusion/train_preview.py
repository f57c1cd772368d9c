"""Sample images during training: what the weights draw as they are at a step.

A training node with ``sample_every`` > 0 draws one image every that many steps (and
after the last) with the one sampler (:func:`nodes.diffusion.sampling.sample`, the
KSampler's), sized as the training images, and sends it on the preview path with the
node's id; the canvas shows it on the node next to the live loss curve.

Rules, so that watching never changes what is trained:

- the image comes from the modules exactly as the running training holds them: the
  handles' LoRA patches are already merged into the weights and the trained layers are
  hooked on (a LoRA run) or the new embedding rows are in the table (textual
  inversion), so the sampler gets the handles without their patch lists (applying them
  again would count them twice) and without extensions (a plain text-to-image draw);
- its noise comes from its own CPU generator seeded with the training seed (every sample
  of a run starts from the same noise, so they compare), and the global CPU random state
  is restored after; the training's generator is never touched;
- the sampler restores everything it changes (``lora_patched``, ``run_scoped``), and
  everything runs without gradient, so optimiser state and weights are unchanged;
- interrupt is checked at every sampler step, so Stop acts within a sample too.

Samples are only drawn when a client watches previews (``ctx.extra["preview"]``, the
KSampler's live-preview rule): nobody sees them otherwise, and each costs
``SAMPLE_STEPS`` x 2 UNet passes (classifier-free guidance) plus a VAE decode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from engine import ExecutionContext, NodeResult
    from nodes.diffusion.handles import DiffusionModel, TextEncoder, Vae

SAMPLE_STEPS = 12  # enough for a recognisable image on the default model, cheap
SAMPLE_CFG = 7.5  # the shipped workflows' guidance scale
SAMPLER = ("euler", "normal")  # KSampler's defaults
MAX_SAMPLE_EVERY = 100_000  # the training nodes' step bound


@dataclass(frozen=True)
class TrainingSample:
    """How a training run draws its samples: every ``every`` steps, ``prompt`` at
    ``resolution`` (square), noise seeded with ``seed``."""

    every: int
    prompt: str
    resolution: int
    seed: int
    steps: int = SAMPLE_STEPS
    cfg: float = SAMPLE_CFG
    #: the last image drawn (``[1, r, r, 3]``), which the node keeps as its UI image
    drawn: list[torch.Tensor] = field(default_factory=list, compare=False, repr=False)

    def callback(self, ctx: ExecutionContext, model: DiffusionModel, clip: TextEncoder,
                 vae: Vae) -> Callable[[int], None]:
        """``run_steps``' ``sample``: draw and send an image with the modules of the
        running training (``model``/``clip`` are the handles it holds; their patches are
        on the weights already)."""
        plain_model = replace(model, patches=(), extensions=())
        plain_clip = replace(clip, patches=())

        def draw(step: int) -> None:
            from nodes.image import image_to_pil

            image = draw_sample(ctx, plain_model, plain_clip, vae, self)
            ctx.send_image(image_to_pil(image)[0])
            self.drawn[:] = [image]

        return draw


def with_last_sample(ctx: ExecutionContext, sample: TrainingSample | None,
                     outputs: tuple[Any, ...]) -> tuple[Any, ...] | NodeResult:
    """The node's outputs, with the last sample drawn (if any) as its UI image: written to
    temp/ like Preview Image's, so the history keeps it and a reloaded canvas (or
    ComfyUI's) shows it on the node after the run."""
    if sample is None or not sample.drawn:
        return outputs
    from engine import NodeResult
    from nodes.image import save_images

    return NodeResult(outputs, {"images": save_images(sample.drawn[0], ctx, "temp",
                                                      "training_sample")})


def training_sample(ctx: ExecutionContext, every: int, prompt: str, captions: list[str],
                    resolution: int, seed: int) -> TrainingSample | None:
    """The node's sample settings, or None when no sample is drawn (``every`` 0, or no
    client watches previews). An empty ``prompt`` means the first caption."""
    if every <= 0 or not ctx.extra.get("preview"):
        return None
    text = prompt.strip() or (captions[0] if captions else "")
    return TrainingSample(every=every, prompt=text, resolution=resolution, seed=seed)


def draw_sample(ctx: ExecutionContext, model: DiffusionModel, clip: TextEncoder, vae: Vae,
                spec: TrainingSample) -> torch.Tensor:
    """One IMAGE ``[1, r, r, 3]`` from ``spec.prompt`` with the modules as they are now."""
    import torch

    from nodes.conditioning import encode_text
    from nodes.diffusion.embeddings import EmbeddingLibrary
    from nodes.diffusion.handles import CondEntry, Conditioning, Latent
    from nodes.diffusion.sampling import SamplingParams, sample
    from nodes.diffusion.schedulers import make_scheduler
    from nodes.latent import decode

    dim = int(clip.text_encoder.get_input_embeddings().weight.shape[1])
    library = EmbeddingLibrary(ctx.env, dim)
    # The global CPU stream is not the training's (it has its own generator), but a run
    # must not depend on whether it was watched: leave it exactly as found.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        positive = Conditioning((CondEntry(encode_text(clip, spec.prompt, library)),))
        negative = Conditioning((CondEntry(encode_text(clip, "", library)),))
        size = spec.resolution // vae.downscale
        latent = Latent(torch.zeros((1, vae.latent_channels, size, size),
                                    device=model.unet.device))
        scheduler = make_scheduler(*SAMPLER, model.scheduler_config, seed=spec.seed)
        params = SamplingParams(seed=spec.seed, steps=spec.steps, cfg=spec.cfg)
        latents = sample(model, scheduler, positive, negative, latent, params,
                         callback=lambda _i, _n, _x: ctx.check_interrupt())
        return decode(vae.scaled_for(model.latent_scale), latents)
