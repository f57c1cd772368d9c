"""ComfyUI's ``TrainLoraNode`` math, run on our LoRA layers and training loop.

What is trained (ComfyUI's choice of layers) is set up in
:mod:`nodes.diffusion.comfy_lora_layers`: a LoRA on every linear and convolution layer and
a difference on every norm weight and bias, all starting from the model itself.

One micro-step (ComfyUI's ``TrainSampler``): pick the batch (shuffled indices; in bucket
mode a bucket drawn with probability proportional to its size first), noise
``N(0, 1)`` from a generator seeded ``seed + 1000·i`` (ComfyUI's), a σ per image from a
uniform ``percent`` (``percent_to_sigma``: σ at t = (1 − percent)·999, log-σ
interpolated), ``x_t = x₀ + σ·noise``, the UNet on ``x_t / √(σ² + 1)`` at the nearest
training timestep, the prediction turned into x̂₀ (ε: ``x_t − σ·ε̂``; v:
``x_t/(σ²+1) − v̂·σ/√(σ²+1)``) and the loss (MSE, L1, Huber or SmoothL1) between x̂₀ and
x₀. The optimiser steps every ``grad_accumulation_steps`` micro-steps; the loss of every
micro-step is recorded. The loop is :func:`~nodes.diffusion.train_common.run_steps`
(progress with the loss, Stop between steps, a non-finite loss refused).

Differences from ComfyUI, on purpose: each image is paired with its own conditioning
(ComfyUI's sampler averages the predictions over all the batch's conditionings), index
and σ draws come from a generator seeded by ``seed`` (ComfyUI draws them from the global
RNG), the latents stay float32, and a multi-resolution batch draws fresh noise per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodes.diffusion import train_common as tc
from nodes.diffusion.comfy_lora_layers import create_layers, lora_state

if TYPE_CHECKING:
    import torch

    from engine import ExecutionContext
    from nodes.diffusion.handles import DiffusionModel

OPTIMIZERS = ("AdamW", "Adam", "SGD", "RMSprop")
LOSS_FUNCTIONS = ("MSE", "L1", "Huber", "SmoothL1")
ALGORITHMS = ("LoRA", "LoHa", "LoKr", "OFT", "OFTv2")  # ComfyUI's; only LoRA here
TRAINING_DTYPES = ("bf16", "fp32", "none")
LORA_DTYPES = ("bf16", "fp32")
MAX_MICRO_STEPS = 1_000_000  # steps x grad_accumulation_steps (the loss map's length)
MAX_SAMPLES = 100_000
MAX_TOKENS = 77 * 64  # a batch's prompts padded to a common length (ComfyUI's LCM rule)


@dataclass(frozen=True)
class ComfySettings:
    """The node's training inputs."""

    steps: int = 16
    grad_accumulation_steps: int = 1
    batch_size: int = 1
    learning_rate: float = 5e-4
    rank: int = 8
    optimizer: str = "AdamW"
    loss_function: str = "MSE"
    seed: int = 0
    training_dtype: str = "bf16"
    lora_dtype: str = "bf16"
    gradient_checkpointing: bool = True


@dataclass
class Dataset:
    """The latents (UNet space) and one prompt embedding ``[1, T, D]`` per image.

    ``groups``: one tensor ``[N, C, h, w]`` (all of one size), the buckets (bucket mode),
    or one ``[1, C, h, w]`` per image (sizes differ); ``mode`` says which."""

    groups: list[torch.Tensor]
    contexts: list[torch.Tensor]
    mode: str  # "standard" | "bucket" | "multires"

    @property
    def count(self) -> int:
        return sum(int(g.shape[0]) for g in self.groups)


def build_dataset(latents: Sequence[Any], positive: Sequence[Any], bucket_mode: bool,
                  unet: Any) -> Dataset:
    """ComfyUI's reading of the node's list inputs: a single LATENT batch, or a list
    (batches split into images; buckets kept whole in bucket mode); one CONDITIONING
    whose entries are the images' prompts, or a list of them (entries flattened). One
    prompt serves every image; otherwise there must be exactly one per image."""
    import torch

    from nodes.diffusion.sampling import check_latent_size
    from nodes.diffusion.sdxl import require_sd_unet

    require_sd_unet(unet, "Train LoRA (TrainLoraNode)")
    samples = [_samples(item, i) for i, item in enumerate(latents)]
    if not samples:
        raise ValueError("latents is empty: link Make Training Dataset's latents (or a LATENT)")
    channels = int(unet.config.in_channels)
    for i, s in enumerate(samples):
        if s.shape[1] != channels:
            raise ValueError(f"latents[{i}] has {s.shape[1]} channels but this UNet takes "
                             f"{channels}: encode the images with this model's VAE")
        if not torch.isfinite(s).all():
            raise ValueError(f"latents[{i}] holds NaN or infinite values")
        check_latent_size(unet, (int(s.shape[-2]), int(s.shape[-1])))
    if bucket_mode:
        groups, mode = samples, "bucket"
    elif len(samples) == 1:
        groups, mode = samples, "standard"
    else:
        rows = [row[None] for s in samples for row in s]
        if len({tuple(r.shape) for r in rows}) == 1:
            groups, mode = [torch.cat(rows)], "standard"
        else:
            groups, mode = rows, "multires"
    count = sum(int(g.shape[0]) for g in groups)
    if count > MAX_SAMPLES:
        raise ValueError(f"{count} training images; at most {MAX_SAMPLES} are supported")
    entries = [e for c in positive for e in _entries(c)]
    if not entries:
        raise ValueError("positive is empty: link the conditioning of the images' captions")
    if len(entries) == 1:
        entries = entries * count
    elif len(entries) != count:
        raise ValueError(f"positive holds {len(entries)} conditionings but latents hold "
                         f"{count} images: give one conditioning per image, in the images' "
                         "order (Make Training Dataset), or a single one for all")
    width = int(unet.config.cross_attention_dim)
    contexts = []
    for i, embeds in enumerate(entries):
        if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3 or embeds.shape[0] != 1 \
                or embeds.shape[-1] != width:
            shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds)
            raise ValueError(f"conditioning {i} is {shape}, not a prompt embedding [1, T, "
                             f"{width}] for this model: encode the captions with its CLIP")
        contexts.append(embeds.detach().float())
    return Dataset([g.detach().float() for g in groups], contexts, mode)


def _samples(item: Any, index: int) -> torch.Tensor:
    import torch

    samples = item.get("samples") if isinstance(item, dict) else getattr(item, "samples", None)
    if not isinstance(samples, torch.Tensor) or samples.dim() != 4 or 0 in samples.shape:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(item).__name__
        raise ValueError(f"latents[{index}] is {shape}, not a LATENT [B, C, h, w]")
    return samples


def _entries(cond: Any) -> list[Any]:
    entries = getattr(cond, "entries", None)
    if entries is not None:
        return [e.embeds for e in entries]
    if isinstance(cond, list | tuple):  # ComfyUI's [[embeds, options], ...]
        return [e[0] if isinstance(e, list | tuple) else e for e in cond]
    raise ValueError(f"positive holds a {type(cond).__name__}, not a CONDITIONING")


# --- σ as ComfyUI's discrete model sampling ------------------------------------------------

class SigmaTable:
    """ComfyUI's ``ModelSamplingDiscrete`` over the model's training schedule."""

    def __init__(self, scheduler_config: dict[str, Any]):
        import torch

        from nodes.diffusion.schedulers import training_sigmas

        scheduler = tc.noise_scheduler(scheduler_config)
        self.prediction_type = str(scheduler.config.prediction_type)
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"cannot train a model whose prediction type is "
                             f"{self.prediction_type!r}; only epsilon and v_prediction")
        self.log_sigmas = torch.tensor(training_sigmas(scheduler), dtype=torch.float32).log()

    def percent_to_sigma(self, percent: float) -> float:
        """σ at t = (1 − percent)·(T − 1), log-σ interpolated between timesteps."""
        t = min(max((1.0 - percent) * (len(self.log_sigmas) - 1), 0.0),
                len(self.log_sigmas) - 1)
        low = math.floor(t)
        high = min(low + 1, len(self.log_sigmas) - 1)
        w = t - low
        return float(((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp())

    def timestep(self, sigmas: torch.Tensor) -> torch.Tensor:
        """The training timestep nearest each σ (in log σ)."""
        dists = sigmas.float().cpu().log()[None] - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0)


def x0_loss(unet: Any, table: SigmaTable, latents: torch.Tensor, noise: torch.Tensor,
            sigmas: torch.Tensor, context: torch.Tensor, criterion: Any,
            amp: torch.dtype | None) -> torch.Tensor:
    """The loss between the UNet's x̂₀ at ``sigmas`` and the clean ``latents``."""
    import torch

    s = sigmas.to(latents)[:, None, None, None]
    noisy = latents + s * noise
    scale = 1 / (s * s + 1).sqrt()
    timesteps = table.timestep(sigmas).to(latents.device)
    autocast = (torch.autocast(latents.device.type, dtype=amp) if amp is not None
                else nullcontext())
    with autocast:
        out = unet((noisy * scale).to(unet.dtype), timesteps,
                   context.to(latents.device, unet.dtype)).sample
    out = out.float()
    if table.prediction_type == "epsilon":
        denoised = noisy - out * s
    else:
        denoised = noisy * scale * scale - out * s * scale
    return criterion(denoised, latents)


def stacked_contexts(contexts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Prompt embeddings of a batch as one tensor; prompts of other lengths (long prompts
    are 77·k tokens) repeated to their least common multiple, as ComfyUI concatenates."""
    import torch

    lengths = {int(c.shape[1]) for c in contexts}
    if len(lengths) == 1:
        return torch.cat(list(contexts))
    common = math.lcm(*lengths)
    if common > MAX_TOKENS:
        raise ValueError(f"the batch's prompts have {sorted(lengths)} tokens, whose common "
                         f"length {common} is too long: use batch_size 1 or shorter captions")
    return torch.cat([c.repeat(1, common // int(c.shape[1]), 1) for c in contexts])


# --- the run ---------------------------------------------------------------------------------

def _optimizer(name: str, params: list[torch.Tensor], lr: float) -> Any:
    """torch's optimisers with their defaults (ComfyUI's); AdamW is our trainer's (torch's
    defaults too: betas 0.9/0.999, weight decay 1e-2, eps 1e-8)."""
    import torch

    if name == "AdamW":
        return tc.make_optimizer(params, lr)
    makers = {"Adam": torch.optim.Adam, "SGD": torch.optim.SGD, "RMSprop": torch.optim.RMSprop}
    if name not in makers:
        raise ValueError(f"unknown optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}")
    return makers[name](params, lr=lr)


def _criterion(name: str) -> Any:
    import torch

    losses = {"MSE": torch.nn.MSELoss, "L1": torch.nn.L1Loss, "Huber": torch.nn.HuberLoss,
              "SmoothL1": torch.nn.SmoothL1Loss}
    if name not in losses:
        raise ValueError(f"unknown loss_function {name!r}: use one of "
                         f"{', '.join(LOSS_FUNCTIONS)}")
    return losses[name]()


def autocast_dtype(training_dtype: str, model_dtype: torch.dtype, device_type: str
                   ) -> torch.dtype | None:
    """The autocast dtype of the forward pass (None: the model's own, no autocast)."""
    import torch

    if training_dtype == "fp32":
        return None
    if training_dtype == "none" and model_dtype == torch.float16:
        return torch.float16 if device_type == "cuda" else None
    return torch.bfloat16


@dataclass
class _Run:
    unet: Any
    data: Dataset
    settings: ComfySettings
    table: SigmaTable
    criterion: Any
    optimizer: Any
    params: list[torch.Tensor]
    generator: torch.Generator
    amp: torch.dtype | None
    scaler: Any = None

    def micro_step(self, i: int) -> float:
        import torch

        s, data = self.settings, self.data
        noise_gen = torch.Generator("cpu").manual_seed((s.seed + 1000 * i) % 2**64)
        device = next(self.unet.parameters()).device
        if data.mode == "multires":
            picked = torch.randperm(data.count, generator=self.generator)[:s.batch_size].tolist()
            loss = sum(self._loss(data.groups[j], [j], noise_gen, device)
                       for j in picked) / len(picked)
        else:
            if data.mode == "bucket":
                sizes = torch.tensor([float(g.shape[0]) for g in data.groups])
                b = int(torch.multinomial(sizes, 1, generator=self.generator))
                group, offset = data.groups[b], int(sum(int(g.shape[0]) for g in data.groups[:b]))
            else:
                group, offset = data.groups[0], 0
            rows = torch.randperm(int(group.shape[0]), generator=self.generator)[:s.batch_size]
            loss = self._loss(group[rows], [offset + int(r) for r in rows], noise_gen, device)
        scaled = loss / s.grad_accumulation_steps
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if (i + 1) % s.grad_accumulation_steps == 0:
            self._optimizer_step()
        return float(loss.detach())

    def _loss(self, latents: torch.Tensor, indices: list[int], noise_gen: torch.Generator,
              device: torch.device) -> torch.Tensor:
        import torch

        noise = torch.randn(latents.shape, generator=noise_gen)
        sigmas = torch.tensor([self.table.percent_to_sigma(
            float(torch.rand((1,), generator=self.generator))) for _ in indices])
        context = stacked_contexts([self.data.contexts[j] for j in indices])
        return x0_loss(self.unet, self.table, latents.to(device), noise.to(device), sigmas,
                       context, self.criterion, self.amp)

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        for p in self.params:  # gradients in the parameters' dtype (ComfyUI's)
            if p.grad is not None and p.grad.dtype != p.dtype:
                p.grad = p.grad.to(p.dtype)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad()


def train(ctx: ExecutionContext, model: DiffusionModel, data: Dataset, settings: ComfySettings,
          existing: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[float]]:
    """Train; the LoRA state dict (kohya layout) and the loss of every micro-step. The
    MODEL's own patches (LoRAs already loaded) are on the weights while training; the
    model is left as it was."""
    import torch

    from nodes.diffusion.lora import patched

    unet = model.unet
    table = SigmaTable(model.scheduler_config)
    generator = torch.Generator("cpu").manual_seed(settings.seed % 2**64)
    lora_dtype = torch.bfloat16 if settings.lora_dtype == "bf16" else torch.float32
    device = next(unet.parameters()).device
    amp = autocast_dtype(settings.training_dtype, unet.dtype, device.type)
    total = settings.steps * settings.grad_accumulation_steps
    if total > MAX_MICRO_STEPS:
        raise ValueError(f"steps x grad_accumulation_steps is {total}; at most "
                         f"{MAX_MICRO_STEPS} micro-steps are supported")
    with ExitStack() as stack:
        stack.enter_context(tc.frozen(unet))
        stack.enter_context(patched(unet, model.patches))
        layers, diffs = create_layers(unet, settings.rank, lora_dtype, generator, existing)
        stack.enter_context(layers.hooked(unet))
        stack.enter_context(diffs.hooked(unet))
        stack.enter_context(tc.unet_checkpointing(unet, settings.gradient_checkpointing))
        params = layers.parameters() + diffs.parameters()
        scaler = (torch.amp.GradScaler("cuda") if amp == torch.float16 and device.type == "cuda"
                  else None)
        run = _Run(unet, data, settings, table, _criterion(settings.loss_function),
                   _optimizer(settings.optimizer, params, settings.learning_rate), params,
                   generator, amp, scaler)
        with torch.enable_grad():
            losses = tc.run_steps(ctx, total, run.micro_step)
        return lora_state(layers, diffs, lora_dtype), losses
