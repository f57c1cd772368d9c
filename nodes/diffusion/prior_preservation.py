"""Prior preservation (DreamBooth, Custom Diffusion): class images the base model draws,
and the loss on them.

diffusers' ``train_dreambooth.py`` / ``train_custom_diffusion.py`` generate
``num_class_images`` images of ``class_prompt`` with the base pipeline before training,
save them as image files, and train on batches of instance and class examples
concatenated (instances first); the prediction and the target are chunked in two and
``loss = mse(instance) + prior_loss_weight · mse(class)``.

Here the class images come from the project's own sampler (``sampling.sample``, what
KSampler runs, with the MODEL's LoRA patches and extensions), the empty prompt as the
negative, in batches of :data:`SAMPLE_BATCH` (the script's ``sample_batch_size``) each
seeded ``seed + batch``. They are quantised to 8 bits, as the script's saved files are,
and kept in ``temp/training/class-<digest>.safetensors`` so a resumed run, or a run
that changes only the learning rate or the steps, does not draw them again.

Several class prompts, one per line (an extension of the scripts' one ``--class_prompt``),
keep several words' meaning: the batches draw them in turn, and each class image is
captioned with its own prompt. "a circle", "a square", ... keeps every shape word of a
model while it learns a new one, where one class keeps only that class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from engine import ExecutionContext
    from nodes.diffusion.handles import DiffusionModel, TextEncoder, Vae

SAMPLE_BATCH = 4  # the scripts' --sample_batch_size


@dataclass(frozen=True)
class PriorPreservation:
    """The scripts' ``--with_prior_preservation`` options, plus how class images are drawn."""

    class_prompt: str
    num_class_images: int = 100
    prior_loss_weight: float = 1.0
    sampling_steps: int = 25
    cfg: float = 7.5
    sampler_name: str = "euler"

    @property
    def prompts(self) -> list[str]:
        """The class prompts, one per line (a single line: the scripts' one class)."""
        return [line.strip() for line in self.class_prompt.splitlines() if line.strip()]

    def prompt_of_batch(self, batch: int) -> str:
        """Batch ``batch`` of class images draws the prompts in turn."""
        prompts = self.prompts
        return prompts[batch % len(prompts)]

    def captions(self, count: int) -> list[str]:
        """Each of the first ``count`` class images' caption: its batch's prompt."""
        return [self.prompt_of_batch(i // SAMPLE_BATCH) for i in range(count)]


def class_images_key(prior: PriorPreservation, resolution: int, seed: int, base_hash: str,
                     patches: tuple = ()) -> str:
    """A digest of everything the class images depend on (their cache file's name)."""
    import torch

    from nodes.diffusion.train_common import run_key

    params = {"prompt": prior.class_prompt, "count": prior.num_class_images,
              "steps": prior.sampling_steps, "cfg": prior.cfg, "sampler": prior.sampler_name,
              "resolution": resolution, "seed": seed}
    return run_key("class", params, torch.zeros(0), [], base_hash, patches)


def generate_class_images(ctx: ExecutionContext, model: DiffusionModel, clip: TextEncoder,
                          vae: Vae, prior: PriorPreservation, resolution: int, seed: int
                          ) -> torch.Tensor:
    """``num_class_images`` images ``[N, r, r, 3]`` (uint8) of the class prompt(s), drawn by
    the base model, batch ``b`` with :meth:`PriorPreservation.prompt_of_batch`. A progress
    event per batch (``phase: class_images``); Stop acts between sampling steps."""
    import torch

    from nodes.conditioning import encode_text
    from nodes.diffusion.handles import CondEntry, Conditioning, Latent
    from nodes.diffusion.sampling import SamplingParams, sample
    from nodes.diffusion.schedulers import make_scheduler
    from nodes.latent import decode

    positives = {p: Conditioning((CondEntry(encode_text(clip, p)),)) for p in prior.prompts}
    negative = Conditioning((CondEntry(encode_text(clip, "")),))
    size = resolution // vae.downscale
    channels = int(model.unet.config.in_channels)
    total = prior.num_class_images
    batches = (total + SAMPLE_BATCH - 1) // SAMPLE_BATCH
    images = []
    for b in range(batches):
        ctx.check_interrupt()
        count = min(SAMPLE_BATCH, total - b * SAMPLE_BATCH)
        latent = Latent(torch.zeros(count, channels, size, size, device=model.device,
                                    dtype=model.dtype))
        scheduler = make_scheduler(prior.sampler_name, "normal", model.scheduler_config,
                                   seed=seed + b)
        params = SamplingParams(seed=seed + b, steps=prior.sampling_steps, cfg=prior.cfg)
        samples = sample(model, scheduler, positives[prior.prompt_of_batch(b)], negative,
                         latent, params,
                         callback=lambda *_: ctx.check_interrupt())  # Stop within a batch
        with torch.no_grad():
            pixels = decode(vae.scaled_for(model.latent_scale), samples)
        images.append((pixels * 255).round().clamp(0, 255).to("cpu", torch.uint8))
        ctx.progress(b + 1, batches, info={"phase": "class_images"})
    return torch.cat(images)


def class_images(ctx: ExecutionContext, model: DiffusionModel, clip: TextEncoder, vae: Vae,
                 prior: PriorPreservation, resolution: int, seed: int, base_hash: str
                 ) -> torch.Tensor:
    """The class images as IMAGE ``[N, r, r, 3]`` in 0..1: from the cache file when an
    earlier run drew them with the same model and options, else drawn and cached."""
    from safetensors.torch import load_file

    from nodes.diffusion.train_common import save_atomic, save_failure

    key = class_images_key(prior, resolution, seed, base_hash,
                           (*model.patches, *clip.patches))
    path: Path = ctx.env.folder("temp") / "training" / f"class-{key}.safetensors"
    images = None
    if path.is_file():
        try:
            images = load_file(str(path))["images"]
        except Exception:  # unreadable (a crash while writing is excluded: writes are atomic)
            path.unlink(missing_ok=True)
    if images is None or images.shape[0] != prior.num_class_images:
        images = generate_class_images(ctx, model, clip, vae, prior, resolution, seed)
        try:  # a cache: on a full or read-only disk the training goes on without it
            save_atomic({"images": images}, {"class_prompt": prior.class_prompt}, path)
        except (OSError, RuntimeError) as exc:
            ctx.warn(f"the class images could not be cached ({save_failure(exc, path.parent)}): "
                     "the next run draws them again")
    return images.float() / 255


def prior_loss(pred: torch.Tensor, target: torch.Tensor, weight: float | None,
               pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The scripts' loss on a batch of instances, then (with ``weight``) as many class
    examples: ``mse(instance) + weight · mse(class)``; without ``weight`` the plain MSE.
    ``pixel_weights`` (a masked loss, one row per example) weight the instances' MSE."""
    import torch.nn.functional as F

    from nodes.diffusion.train_common import masked_mse

    if weight is None:
        return masked_mse(pred, target, pixel_weights)
    pred, pred_prior = pred.chunk(2, dim=0)
    target, target_prior = target.chunk(2, dim=0)
    instance_weights = None if pixel_weights is None else pixel_weights.chunk(2, dim=0)[0]
    loss = masked_mse(pred, target, instance_weights)
    return loss + weight * F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
