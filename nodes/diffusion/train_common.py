"""The training loop the training nodes share (diffusers' example scripts' math).

One step, as ``train_text_to_image_lora.py`` and ``textual_inversion.py`` do it:
latents = a sample of the VAE posterior x scaling factor; noise ~ N(0, 1);
timesteps uniform in ``[0, num_train_timesteps)``; noisy latents from a
``DDPMScheduler`` built from the model's scheduler config; loss = MSE (float32,
mean) between the UNet's prediction and the target its ``prediction_type`` asks
for (epsilon: the noise; v_prediction: the velocity); AdamW (betas 0.9/0.999,
weight decay 1e-2, eps 1e-8), optional gradient clipping.

The scripts' options, each off by default as there (so the default step is theirs):
a learning-rate schedule (``get_scheduler``: constant, or warm-up then linear / cosine
decay), Min-SNR-γ loss weighting (``snr_gamma``, Hang et al. 2023) and offset noise
(``noise_offset``: a per-channel constant added to the noise).

The posterior of each image is computed once (mean and std); a step samples it
afresh (``mean + std * randn``, what ``latent_dist.sample()`` computes), so the
VAE runs once per image, not once per step.

Nothing here changes a cached model for good: base weights are frozen only while
training (their ``requires_grad`` flags restored after) and gradient
checkpointing is switched back off when it was off.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.paths import give_plain_mode

if TYPE_CHECKING:
    import torch

    from engine import ExecutionContext
    from nodes.diffusion.handles import Vae

log = logging.getLogger(__name__)

# diffusers' example scripts' AdamW defaults
ADAM_BETAS = (0.9, 0.999)
ADAM_WEIGHT_DECAY = 1e-2
ADAM_EPSILON = 1e-8

#: free bytes under which a failed checkpoint write is put down to a full disk: torch's
#: writer reports ENOSPC as "enforce fail at inline_container.cc ... unexpected pos"
FULL_BELOW = 64 << 20


@dataclass(frozen=True)
class TrainSettings:
    """What every training node asks: the optimisation and the data size."""

    steps: int
    learning_rate: float
    batch_size: int
    seed: int
    resolution: int
    gradient_checkpointing: bool = False
    lr_scheduler: str = "constant"  # a diffusers get_scheduler name
    lr_warmup_steps: int = 0
    snr_gamma: float = 0.0  # 0: plain MSE (the scripts' None)
    noise_offset: float = 0.0


LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine",
                 "cosine_with_restarts", "polynomial")


def parse_captions(captions: str, count: int, *, input_name: str = "captions") -> list[str]:
    """One caption per image: a line per image (empty lines are empty captions, as Load
    Image Batch gives for images without a .txt), or a single line for all of them."""
    text = captions.replace("\r\n", "\n")
    for candidate in (text, text.strip("\n")):  # a trailing newline is not a caption
        lines = [line.strip() for line in candidate.split("\n")]
        if len(lines) == count:
            return lines
    if len(lines) == 1:
        if not lines[0]:
            raise ValueError(f"{input_name} is empty: give one caption per image (one a line) "
                             "or one caption for all images")
        return lines * count
    raise ValueError(f"{len(lines)} captions for {count} images: give one caption per image "
                     "(one a line, in the images' order) or a single caption for all")


def prepare_pixels(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """IMAGE ``[B, H, W, 3]`` in 0..1 → ``[B, 3, r, r]`` in -1..1, as the scripts' transforms:
    scale the shorter side to ``resolution`` (bilinear, antialiased), crop the centre."""
    import torch

    from nodes.limits import check_image

    check_image(images, "training images", (3, 4))  # RGB (alpha dropped), >= 1 pixel
    if not torch.isfinite(images).all():  # else "the loss became nan" at the first step
        raise ValueError("the training images hold NaN or infinite values: fix the node "
                         "that made them")
    pixels = _fit(images[..., :3].permute(0, 3, 1, 2).float(), resolution)
    return (pixels * 2 - 1).clamp(-1, 1).contiguous()


def _fit(pixels: torch.Tensor, resolution: int) -> torch.Tensor:
    """``[B, C, H, W]``: the shorter side scaled to ``resolution``, the middle cropped."""
    import torch.nn.functional as F

    height, width = pixels.shape[-2:]
    scale = resolution / min(height, width)
    size = (max(resolution, round(height * scale)), max(resolution, round(width * scale)))
    if size != (height, width):
        pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True,
                               align_corners=False)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return pixels[..., top:top + resolution, left:left + resolution]


@dataclass(frozen=True)
class LossMask:
    """A masked loss: MASK (1 = the subject) and the weight of the rest."""

    mask: torch.Tensor
    unmasked_weight: float

    def applied(self, posterior: Posterior, images: torch.Tensor, resolution: int
                ) -> Posterior:
        """``posterior`` with the per-pixel weights at its latents' size; its rows past
        ``images`` (prior preservation's class images) keep weight 1."""
        from dataclasses import replace

        import torch

        size = (int(posterior.mean.shape[-2]), int(posterior.mean.shape[-1]))
        weights = loss_weights(self.mask, images, resolution, size, self.unmasked_weight)
        extra = int(posterior.mean.shape[0]) - int(weights.shape[0])
        if extra > 0:
            weights = torch.cat([weights, weights.new_ones((extra, 1, *size))])
        return replace(posterior, weights=weights.to(posterior.mean.device))


def loss_weights(mask: torch.Tensor, images: torch.Tensor, resolution: int,
                 latent_size: tuple[int, int], unmasked_weight: float) -> torch.Tensor:
    """A masked loss's per-pixel weights ``[B, 1, h, w]``: 1 where ``mask`` is 1 (the
    subject), ``unmasked_weight`` where it is 0, blended between. ``mask`` (MASK
    ``[B or 1, H, W]``, any size) is stretched to the images' size, then scaled and cropped
    as they are, then area-averaged to the latents' size."""
    import torch
    import torch.nn.functional as F

    count = int(images.shape[0])
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() != 3 or mask.shape[0] not in (1, count) or 0 in mask.shape:
        raise ValueError(f"loss_mask has shape {tuple(mask.shape)}: give one mask for all "
                         f"{count} images or one per image (MASK [B, H, W])")
    if not torch.isfinite(mask).all():
        raise ValueError("loss_mask holds NaN or infinite values")
    mask = mask.float().clamp(0, 1).expand(count, -1, -1)[:, None]
    height, width = int(images.shape[1]), int(images.shape[2])
    if tuple(mask.shape[-2:]) != (height, width):
        mask = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)
    mask = F.adaptive_avg_pool2d(_fit(mask, resolution), latent_size)
    if not bool((mask.flatten(1).amax(1) > 0).all()) and unmasked_weight == 0:
        raise ValueError("a loss_mask is empty (all 0) while unmasked_weight is 0: that image "
                         "would teach nothing; mark its subject or raise unmasked_weight")
    return (unmasked_weight + (1 - unmasked_weight) * mask).contiguous()


def check_resolution(unet: Any, vae: Vae, resolution: int) -> None:
    """Refuse a size the UNet cannot take (latents must halve evenly at every level)."""
    multiple = vae.downscale * 2 ** (len(unet.config.block_out_channels) - 1)
    if resolution % multiple:
        nearest = resolution // multiple * multiple or multiple
        raise ValueError(f"resolution {resolution} is not a multiple of {multiple} (this "
                         f"model's VAE and UNet downsampling): use {nearest}")


@dataclass(frozen=True)
class Posterior:
    """The VAE posterior of each training image, already in UNet space (x scaling factor)."""

    mean: torch.Tensor
    std: torch.Tensor
    # per-image loss weights at the latents' size ``[B, 1, h, w]`` (masked loss); None: plain
    weights: torch.Tensor | None = None

    def sample(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        import torch

        mean, std = self.mean[index], self.std[index]
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        return mean + std * eps


def encode_posterior(vae: Vae, pixels: torch.Tensor) -> Posterior:
    """Each image's posterior (one at a time: the VAE is the memory-hungry part)."""
    import torch

    from nodes.diffusion.vae_codec import encode_raw

    means, stds = [], []
    for i in range(pixels.shape[0]):
        dist = encode_raw(vae, pixels[i:i + 1])
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    factor = vae.scaling_factor
    return Posterior(torch.cat(means) * factor, torch.cat(stds) * factor)


def noise_scheduler(scheduler_config: dict[str, Any]) -> Any:
    """The scripts' ``DDPMScheduler`` from the model's scheduler config."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config)


def draw_noise(latents: torch.Tensor, scheduler: Any, generator: torch.Generator,
               noise_offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noise, timesteps)`` for one batch: standard normal noise (plus ``noise_offset``
    times a normal draw per image and channel, as the scripts), uniform timesteps."""
    import torch

    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
    if noise_offset:
        noise = noise + noise_offset * torch.randn(
            (*latents.shape[:2], 1, 1), generator=generator, dtype=latents.dtype)
    timesteps = torch.randint(0, int(scheduler.config.num_train_timesteps),
                              (latents.shape[0],), generator=generator)
    return noise.to(latents.device), timesteps.long().to(latents.device)


def batch_loss(unet: Any, scheduler: Any, posterior: Posterior, generator: torch.Generator,
               index: torch.Tensor, context: torch.Tensor, noise: torch.Tensor | None = None,
               timesteps: torch.Tensor | None = None, latents: torch.Tensor | None = None,
               *, snr_gamma: float = 0.0, noise_offset: float = 0.0) -> torch.Tensor:
    """The scripts' loss on images ``index``: latents (a posterior sample), then noise and
    timesteps are drawn from ``generator`` unless given (tests pass the reference's)."""
    if latents is None:
        latents = posterior.sample(index, generator)
    if noise is None or timesteps is None:
        noise, timesteps = draw_noise(latents, scheduler, generator, noise_offset)
    pixel_weights = None if posterior.weights is None else posterior.weights[index]
    return diffusion_loss(unet, scheduler, latents, noise, timesteps, context.to(unet.dtype),
                          snr_gamma, pixel_weights)


def diffusion_loss(unet: Any, scheduler: Any, latents: torch.Tensor, noise: torch.Tensor,
                   timesteps: torch.Tensor, context: torch.Tensor, snr_gamma: float = 0.0,
                   pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between the UNet's prediction and the target of the scheduler's prediction
    type (Min-SNR-γ weighted when ``snr_gamma`` > 0, masked by ``pixel_weights``)."""
    pred, target = prediction_and_target(unet, scheduler, latents, noise, timesteps, context)
    return weighted_mse(pred, target, scheduler, timesteps, snr_gamma, pixel_weights)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, scheduler: Any,
                 timesteps: torch.Tensor, snr_gamma: float = 0.0,
                 pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The scripts' loss: the mean MSE, or with ``snr_gamma`` > 0 each image's MSE times
    min(SNR, γ) / SNR (ε-prediction; / (SNR + 1) for v-prediction), then the mean.

    ``pixel_weights`` ``[B, 1, h, w]`` (a masked loss) makes each image's MSE the
    weighted mean over its latent pixels: a small subject counts as much as a large one.
    """
    import torch

    if not snr_gamma:
        return masked_mse(pred, target, pixel_weights)
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    weights = torch.clamp(snr, max=snr_gamma)
    weights = weights / (snr + 1 if scheduler.config.prediction_type == "v_prediction"
                         else snr)
    return (per_image_mse(pred, target, pixel_weights) * weights).mean()


def per_image_mse(pred: torch.Tensor, target: torch.Tensor,
                  pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Each image's MSE ``[B]``: the mean over its elements, or with ``pixel_weights``
    ``[B, 1, h, w]`` the weighted mean (what the weights leave out counts less)."""
    import torch.nn.functional as F

    loss = F.mse_loss(pred.float(), target.float(), reduction="none")
    dims = list(range(1, loss.dim()))
    if pixel_weights is None:
        return loss.mean(dim=dims)
    w = pixel_weights.to(loss)
    return (loss * w).mean(dim=dims) / w.mean(dim=dims)


def masked_mse(pred: torch.Tensor, target: torch.Tensor,
               pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The scripts' mean MSE, or the mean of each image's weighted MSE (a masked loss)."""
    import torch.nn.functional as F

    if pixel_weights is None:
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    return per_image_mse(pred, target, pixel_weights).mean()


def tokenize(tokenizer: Any, captions: list[str], device: Any) -> torch.Tensor:
    """Token ids ``[B, 77]`` as the scripts tokenize: padded to max length, truncated."""
    return tokenizer(captions, padding="max_length", truncation=True,
                     max_length=tokenizer.model_max_length, return_tensors="pt"
                     ).input_ids.to(device)


def make_optimizer(params: Iterable[torch.Tensor], lr: float) -> torch.optim.AdamW:
    import torch

    return torch.optim.AdamW(params, lr=lr, betas=ADAM_BETAS, weight_decay=ADAM_WEIGHT_DECAY,
                             eps=ADAM_EPSILON)


def make_lr_scheduler(optimizer: Any, settings: TrainSettings) -> Any:
    """diffusers' ``get_scheduler`` over the run's steps (stepped after every optimiser
    step, as the scripts do; "constant" keeps the learning rate)."""
    from diffusers.optimization import get_scheduler

    if settings.lr_scheduler not in LR_SCHEDULERS:
        raise ValueError(f"unknown lr_scheduler {settings.lr_scheduler!r}: use one of "
                         f"{', '.join(LR_SCHEDULERS)}")
    return get_scheduler(settings.lr_scheduler, optimizer,
                         num_warmup_steps=settings.lr_warmup_steps,
                         num_training_steps=settings.steps)


class BatchOrder:
    """Image indices per step: shuffled epochs (a fresh permutation each), a batch never
    repeating an image unless the batch is larger than the data set. Its state (the
    indices not yet used) is part of a checkpoint."""

    def __init__(self, count: int, batch_size: int, generator: torch.Generator) -> None:
        self.count, self.batch_size, self.generator = count, batch_size, generator
        self.pending: list[int] = []

    def streams(self) -> dict[str, Any]:
        """The random stream and batch order as they are now (a checkpoint's part that
        a step changes before its optimiser step: :attr:`Checkpointing.rewind`)."""
        return {"generator": self.generator.get_state(), "pending": list(self.pending)}

    def next(self) -> torch.Tensor:
        import torch

        while len(self.pending) < self.batch_size:
            self.pending.extend(torch.randperm(self.count, generator=self.generator).tolist())
        batch, self.pending = self.pending[:self.batch_size], self.pending[self.batch_size:]
        return torch.tensor(batch, dtype=torch.long)


@contextmanager
def frozen(*modules: Any) -> Iterator[None]:
    """Every parameter of ``modules`` without gradient inside the block; flags restored."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@contextmanager
def unet_checkpointing(unet: Any, enabled: bool) -> Iterator[None]:
    """Gradient checkpointing on the UNet for the block (recomputes activations in the
    backward pass: less memory, about a third more time)."""
    was = bool(getattr(unet, "is_gradient_checkpointing", False))
    if enabled and not was:
        unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if enabled and not was:
            unet.disable_gradient_checkpointing()


@dataclass
class Checkpointing:
    """Where a run keeps its resumable state, and how to read and write that state.

    ``state()`` returns tensors, numbers and lists only (read back with
    ``weights_only=True``); ``restore(state)`` puts it back. ``rewind()`` gives the part
    of the state a step changes before its optimiser step (the random stream and batch
    order it draws from): taken as each step starts, it replaces those keys when a Stop
    lands inside a step, so the resumed run draws what the stopped step drew."""

    path: Path
    state: Callable[[], dict[str, Any]]
    restore: Callable[[dict[str, Any]], None]
    every: int = 50
    rewind: Callable[[], dict[str, Any]] | None = None
    #: the step of the checkpoint on disk, saved or resumed from (0: none)
    saved_step: int = field(default=0, init=False)
    #: why the last save failed, for the user ("" when it landed)
    failure: str = field(default="", init=False)
    #: why a checkpoint on disk could not be resumed from ("" when none was refused)
    unreadable: str = field(default="", init=False)

    def save(self, step: int, losses: list[float],
             step_start: dict[str, Any] | None = None) -> bool:
        """Write the state at ``step``; False, logged, when it cannot be written: a
        checkpoint is a convenience, so the run goes on (or stops as asked), and a later
        one, or the last that landed, is what a rerun resumes from."""
        import torch

        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"step": step, "losses": losses,
                        "run": {**self.state(), **(step_start or {})}}, tmp)
            os.replace(tmp, self.path)
        except (OSError, RuntimeError) as exc:  # a full temp/: torch's writer raises either
            self.failure = save_failure(exc, self.path.parent)  # before tmp frees its space
            with suppress(OSError):  # a read-only folder refuses even to unlink nothing
                tmp.unlink(missing_ok=True)
            log.warning("training checkpoint not saved at step %d (%s); %s", step,
                        self.failure, self.resume_note())
            return False
        self.saved_step, self.failure = step, ""
        return True

    def resume_note(self) -> str:
        """Where a rerun of the same inputs starts, as things stand."""
        if self.saved_step:
            return f"a rerun resumes from step {self.saved_step}, the last one saved"
        return "no checkpoint of this run is kept: a rerun starts from step 0"

    def load(self) -> tuple[int, list[float]]:
        """The step and losses to resume from (0 and [] without a checkpoint)."""
        import torch

        if not self.path.is_file():
            return 0, []
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            self.restore(saved["run"])
            step, losses = int(saved["step"]), list(saved["losses"])
        except Exception as exc:  # damaged or from another version: start afresh, saying so
            self.unreadable = f"{type(exc).__name__}: {str(exc)[:200]}"
            log.warning("training checkpoint %s not resumed (%s); starting from step 0",
                        self.path, self.unreadable)
            if not isinstance(exc, OSError):  # a read error may pass: keep the file then
                with suppress(OSError):  # a read-only temp/: afresh all the same
                    self.path.unlink(missing_ok=True)
            return 0, []
        self.saved_step = step
        return step, losses


def save_failure(exc: BaseException, folder: Path) -> str:
    """Why a checkpoint could not be written to ``folder``, in the user's words: a full
    disk named as such (torch's writer says only "unexpected pos"), else the error."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or (isinstance(exc, RuntimeError) and _nearly_full(folder)):
        return "no space left on temp/training/ (disk full)"
    if isinstance(exc, OSError) and exc.strerror:  # without the temp file's path
        return f"temp/training/: {exc.strerror}"
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < FULL_BELOW
    except OSError:
        return False


#: what a Stop waits for while a checkpoint is written (ExecutionContext.finishing)
CHECKPOINT_WORK = "writing the training checkpoint"


def run_steps(ctx: ExecutionContext, steps: int, step: Callable[[int], float],
              checkpointing: Checkpointing | None = None, *,
              sample: Callable[[int], None] | None = None, sample_every: int = 0
              ) -> list[float]:
    """Run ``step(i)`` (one optimiser step, returning its loss) ``steps`` times.

    Interrupt is checked before every step and every step sends a progress event
    carrying its ``loss``. With ``checkpointing``, the state is saved every ``every``
    steps, when interrupted and when done; a run of the same inputs resumes where it
    stopped (the same result as an uninterrupted run). The caller deletes the file once
    it has saved the result.
    A non-finite loss stops with advice.

    With ``sample`` and ``sample_every`` > 0, ``sample(n)`` runs after step ``n`` when
    ``n`` is a multiple of ``sample_every``, and after the last step (the weights as they
    are then: ``train_preview`` draws an image with them). It must not touch the
    training's state or random streams, so a run gives the same result with or without it.
    """
    from engine.context import Interrupted

    start, losses = checkpointing.load() if checkpointing else (0, [])
    if unreadable := getattr(checkpointing, "unreadable", ""):
        ctx.warn(f"the checkpoint of an earlier run of these inputs could not be read "
                 f"({unreadable}): training starts again from step 0")
    rewind = checkpointing.rewind if checkpointing else None
    step_start: dict[str, Any] | None = None  # set while a step is under way
    try:
        for i in range(start, steps):
            step_start = rewind() if rewind else None
            ctx.check_interrupt()
            loss = step(i)
            if not math.isfinite(loss):
                raise ValueError(f"the loss became {loss} at step {i + 1}: lower the learning "
                                 "rate")
            losses.append(loss)
            step_start = None
            # a resumed run's first step says so: a canvas that did not see the earlier run
            # (reopened, another tab) marks where the curve goes on from the checkpoint
            info = {"loss": loss, **({"resumed_from": start} if i == start > 0 else {})}
            ctx.progress(i + 1, steps, info=info)
            if checkpointing and (i + 1) % checkpointing.every == 0 and i + 1 < steps:
                with ctx.finishing(CHECKPOINT_WORK):
                    checkpointing.save(i + 1, losses)
            if sample and sample_every > 0 and ((i + 1) % sample_every == 0 or i + 1 == steps):
                sample(i + 1)
    except Interrupted:
        if checkpointing and len(losses) > start:
            # a large model's state takes seconds to write: the Stop waits for it
            with ctx.finishing(CHECKPOINT_WORK):
                saved = checkpointing.save(len(losses), losses, step_start)
            if not saved:
                # Stop promises a checkpoint: whoever stopped must hear it is not there
                ctx.warn(f"Stop: the training state at step {len(losses)} could not be saved "
                         f"({checkpointing.failure}); {checkpointing.resume_note()}")
        raise
    if checkpointing and len(losses) > start:
        # the finished state, until the caller has saved what it trained (then it
        # deletes the file): a save that fails is redone without training again
        with ctx.finishing(CHECKPOINT_WORK):
            checkpointing.save(len(losses), losses)
    return losses


def optimise(ctx: ExecutionContext, settings: TrainSettings, step: Callable[[], float],
             checkpointing: Checkpointing | None, sample: Any, handles: tuple[Any, Any, Any]
             ) -> list[float]:
    """:func:`run_steps` with gradients on: ``step()`` per optimiser step and, with
    ``sample`` (a ``train_preview.TrainingSample``), sample images drawn with ``handles``
    (the MODEL, CLIP and VAE the run trains) every ``sample.every`` steps."""
    import torch

    draw = sample.callback(ctx, *handles) if sample else None
    with torch.enable_grad():
        return run_steps(ctx, settings.steps, lambda _i: step(), checkpointing, sample=draw,
                         sample_every=sample.every if sample else 0)


def run_key(kind: str, params: dict[str, Any], images: torch.Tensor, captions: list[str],
            base_hash: str, patches: Iterable[Any] = (),
            tensors: Iterable[torch.Tensor | None] = ()) -> str:
    """A digest of everything a run's result depends on: its checkpoint's file name.
    ``tensors``: other tensor inputs (a loss mask), None where absent."""
    import torch

    digest = hashlib.sha256(json.dumps([kind, params, captions], sort_keys=True,
                                       default=str).encode())
    digest.update(images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    for tensor in tensors:
        digest.update(b"none" if tensor is None else str(tuple(tensor.shape)).encode())
        if tensor is not None:
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy()
                          .tobytes())
    digest.update(base_hash.encode())
    digest.update(patches_digest(patches).encode())
    return digest.hexdigest()[:32]


def checkpoint_path(ctx: ExecutionContext, kind: str, key: str) -> Path:
    from engine.environment import RESUMABLE_DIR

    return ctx.env.folder("temp", create=True) / RESUMABLE_DIR / f"{kind}-{key}.pt"


def weights_hash(*modules: Any) -> str:
    """sha256 of the modules' weights (names, shapes, bytes): the base model's identity."""
    import torch

    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy()
                          .tobytes())
    return digest.hexdigest()


def save_atomic(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    """Write a safetensors file under a temporary name, then rename it into place."""
    from nodes.diffusion.safetensors_io import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                  str(tmp), metadata=metadata)
        give_plain_mode(tmp)  # safetensors' writer makes 0600 files
        os.replace(tmp, path)
    finally:
        with suppress(OSError):  # never masks the write's own error (EROFS on unlink)
            tmp.unlink(missing_ok=True)


def prediction_and_target(unet: Any, scheduler: Any, latents: torch.Tensor,
                          noise: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet's prediction on the noised latents and the target of the scheduler's
    prediction type, before any loss (prior preservation chunks both in two)."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    pred = unet(noisy.to(unet.dtype), timesteps, context.to(unet.dtype)).sample
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return pred, noise
    if kind == "v_prediction":
        return pred, scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"cannot train a model whose prediction type is {kind!r}; "
                     "only epsilon and v_prediction models can be trained")


def patches_digest(patches: Iterable[Any]) -> str:
    """sha256 of model/CLIP patches whatever their updates: every tensor and number of an
    update's fields (LoRA, DoRA, LyCORIS, OFT, GLoRA), and ``value``/``scale`` where
    those are computed (TIME, Custom Diffusion, ``.diff`` files, model merges)."""
    import torch

    digest = hashlib.sha256()
    for patch in patches:
        for name, update in patch.weights:
            digest.update(f"{name}:{patch.strength}:{type(update).__name__}".encode())
            fields = ([f.name for f in dataclasses.fields(update)]
                      if dataclasses.is_dataclass(update) else [])
            for attr in dict.fromkeys([*fields, "down", "up", "value", "magnitude", "scale"]):
                part = getattr(update, attr, None)
                if isinstance(part, torch.Tensor):
                    digest.update(part.detach().to("cpu", torch.float32).contiguous()
                                  .numpy().tobytes())
                elif part is None or isinstance(part, int | float | str | tuple):
                    digest.update(f"{attr}={part!r};".encode())
    return digest.hexdigest()
