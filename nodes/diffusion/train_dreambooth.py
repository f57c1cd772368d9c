"""DreamBooth (diffusers' ``train_dreambooth.py``): a full fine-tune of the UNet (and, when
asked, the text encoder) on a few captioned images, with optional prior preservation.

The base modules are never changed: training runs on float32 copies (the script refuses
to train weights in lower precision) with the handles' LoRA patches merged into them,
and the result is new MODEL / CLIP handles over the copies.

A step, as the script's: the batch is the instance examples, then (prior preservation)
as many class examples, concatenated; latents are a posterior sample x scaling factor,
noise and uniform timesteps are drawn for the whole batch; the prediction and its target
(noise, or v) are chunked in two and ``loss = mse(instance) + prior_loss_weight ·
mse(class)``; backward, gradient norm clipped to 1.0 (``max_grad_norm``) over every
trained parameter, AdamW step (train_common's defaults, which are the script's).
The script's dataset pairs instance ``i % n_instance`` with class ``i % n_class`` for
``i`` in ``range(max(n_instance, n_class))``, shuffled; so does :meth:`DreamBoothTraining.rows`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodes.diffusion import pivotal_tuning as pt
from nodes.diffusion import train_common as tc
from nodes.diffusion.prior_preservation import PriorPreservation, prior_loss

if TYPE_CHECKING:
    import torch

    from engine import ExecutionContext
    from nodes.diffusion.handles import DiffusionModel, TextEncoder, Vae
    from nodes.diffusion.train_preview import TrainingSample

MAX_GRAD_NORM = 1.0  # the script's --max_grad_norm
LARGE_MODEL = 100_000_000  # parameters: above it a resumable state is written less often


def trainable_copy(module: Any, patches: tuple[Any, ...] = ()) -> Any:
    """A float32 copy of ``module`` with ``patches`` (LoRA updates) merged into its
    weights, every parameter trainable; ``module`` itself is unchanged."""
    import torch

    from nodes.diffusion.lora import patched

    with patched(module, patches):
        clone = copy.deepcopy(module)
    if any(p.dtype != torch.float32 for p in clone.parameters()):
        clone.to(torch.float32)
    clone.requires_grad_(True)
    return clone


def check_trainable(model: DiffusionModel, vae: Vae) -> None:
    """Refuse UNets the text-to-image objective does not fit (inpainting, Instruct-Pix2Pix)."""
    channels, latent = int(model.unet.config.in_channels), vae.latent_channels
    if channels != latent:
        raise ValueError(f"this UNet takes {channels} input channels, not the VAE's {latent} "
                         "latent channels (an inpainting or Instruct-Pix2Pix model): "
                         "DreamBooth trains text-to-image models; load one with Load "
                         "Checkpoint")


@contextmanager
def _text_checkpointing(encoder: Any, enabled: bool) -> Iterator[None]:
    """transformers' gradient checkpointing on a text encoder for the block."""
    if not enabled:
        yield
        return
    encoder.gradient_checkpointing_enable()
    try:
        yield
    finally:
        encoder.gradient_checkpointing_disable()


@dataclass
class DreamBoothTraining:
    """One run's state; :meth:`step` is one optimiser step."""

    unet: Any  # the trained copy
    text_encoder: Any  # the trained copy, or the base (or pivot's) encoder, frozen
    train_text_encoder: bool
    posterior: tc.Posterior  # instance images, then class images
    ids: torch.Tensor  # caption token ids per row of the posterior
    n_instance: int
    n_class: int
    prior_loss_weight: float | None  # None: no prior preservation
    scheduler: Any
    params: list[Any]
    optimizer: Any
    generator: torch.Generator
    context: torch.Tensor | None = None  # every row's encoding when the TE is frozen
    clip: TextEncoder | None = None  # the handle the run encodes with (the pivot's, with one)
    pivot: pt.PivotSpec | None = None
    token_rows: pt.TokenRows | None = None  # the pivot's trained rows
    steps_done: int = 0

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Posterior rows of dataset items ``index``: the instances, then their classes."""
        import torch

        instance = index % self.n_instance
        if self.prior_loss_weight is None:
            return instance
        return torch.cat([instance, self.n_instance + index % self.n_class])

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        if self.context is not None:
            return self.context[rows]
        return self.text_encoder(self.ids[rows])[0]

    def step(self, index: torch.Tensor, noise: torch.Tensor | None = None,
             timesteps: torch.Tensor | None = None, latents: torch.Tensor | None = None
             ) -> float:
        """One step on dataset items ``index``; latents, noise and timesteps are drawn
        (in that order) unless given, for the whole concatenated batch."""
        import torch

        rows = self.rows(index)
        if latents is None:
            latents = self.posterior.sample(rows, self.generator)
        if noise is None or timesteps is None:
            noise, timesteps = tc.draw_noise(latents, self.scheduler, self.generator)
        pred, target = tc.prediction_and_target(self.unet, self.scheduler, latents, noise,
                                                timesteps, self.encode(rows))
        weights = None if self.posterior.weights is None else self.posterior.weights[rows]
        loss = prior_loss(pred, target, self.prior_loss_weight, weights)
        loss.backward()
        pt.hold_back(self.params, self.pivot, self.steps_done)
        torch.nn.utils.clip_grad_norm_([p for p in self.trained if p.grad is not None],
                                       MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.steps_done += 1
        return float(loss.detach())

    @property
    def trained(self) -> list[Any]:
        """Every trained tensor: the copies' parameters, then the pivot's rows."""
        return self.params + ([self.token_rows.rows] if self.token_rows is not None else [])

    @property
    def dataset_size(self) -> int:
        """The script's dataset length: ``max(n_instance, n_class)`` with prior preservation."""
        return max(self.n_instance, self.n_class) if self.prior_loss_weight is not None \
            else self.n_instance


@contextmanager
def dreambooth_training(model: DiffusionModel, clip: TextEncoder, vae: Vae,
                        images: torch.Tensor, captions: list[str], settings: tc.TrainSettings,
                        train_text_encoder: bool = False,
                        prior: PriorPreservation | None = None,
                        class_images: torch.Tensor | None = None,
                        loss_mask: tc.LossMask | None = None,
                        pivot: pt.PivotSpec | None = None
                        ) -> Iterator[DreamBoothTraining]:
    """Set up a run on copies of the UNet (and text encoder); on exit the copies are in
    eval mode without gradients, ready to sample with. ``loss_mask`` weights the
    instances' loss per pixel (a masked loss). With ``pivot`` the caption's concept word
    trains its embedding too (pivotal tuning), in :attr:`DreamBoothTraining.clip`'s
    copied table."""
    import torch

    from nodes.diffusion.lora import patched

    if (prior is None) != (class_images is None):
        raise ValueError("prior preservation needs both its options and the class images")
    check_trainable(model, vae)
    tc.check_resolution(model.unet, vae, settings.resolution)
    pixels = tc.prepare_pixels(images, settings.resolution)
    rows_captions = list(captions)
    if class_images is not None and prior is not None:
        pixels = torch.cat([pixels, tc.prepare_pixels(class_images, settings.resolution)])
        rows_captions += prior.captions(int(class_images.shape[0]))
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    base_clip, token_ids = clip, []
    if pivot is not None:
        clip, token_ids = pt.pivot_clip(clip, pivot)
    unet = trainable_copy(model.unet, model.patches)
    encoder = (trainable_copy(clip.text_encoder, base_clip.patches) if train_text_encoder
               else clip.text_encoder)
    trained = [unet, encoder] if train_text_encoder else [unet]
    with ExitStack() as stack:
        for module in trained:  # whatever happens: sampling-ready, no gradients kept
            stack.callback(module.requires_grad_, False)
            stack.callback(module.eval)
        stack.enter_context(tc.frozen(vae.vae))
        ids = tc.tokenize(clip.tokenizer, rows_captions, encoder.device)
        context = None
        with torch.no_grad():
            posterior = tc.encode_posterior(vae.scaled_for(model.latent_scale), pixels)
            if loss_mask is not None:
                posterior = loss_mask.applied(posterior, images, settings.resolution)
            if not train_text_encoder and pivot is None:
                with patched(encoder, base_clip.patches):
                    context = encoder(ids)[0].float()
        if not train_text_encoder and pivot is not None:  # encoded each step, rows hooked
            stack.enter_context(tc.frozen(encoder))
            stack.enter_context(patched(encoder, base_clip.patches))
        for module in trained:
            module.train()  # the script's unet.train() (no dropout in SD's modules)
        stack.enter_context(tc.unet_checkpointing(unet, settings.gradient_checkpointing))
        stack.enter_context(_text_checkpointing(
            encoder, settings.gradient_checkpointing and train_text_encoder))
        params = [p for module in trained for p in module.parameters()]
        optimizer = tc.make_optimizer(params, settings.learning_rate)
        token_rows = (pt.attach(stack, encoder, ids[:int(images.shape[0])], token_ids, pivot,
                                optimizer) if pivot is not None else None)
        yield DreamBoothTraining(
            unet=unet, text_encoder=encoder, train_text_encoder=train_text_encoder,
            posterior=posterior, ids=ids, n_instance=int(images.shape[0]),
            n_class=0 if class_images is None else int(class_images.shape[0]),
            prior_loss_weight=None if prior is None else prior.prior_loss_weight,
            scheduler=tc.noise_scheduler(model.scheduler_config), params=params,
            optimizer=optimizer, generator=generator, context=context, pivot=pivot,
            token_rows=token_rows, clip=clip)


def train_dreambooth(ctx: ExecutionContext, model: DiffusionModel, clip: TextEncoder,
                     vae: Vae, images: torch.Tensor, captions: list[str],
                     settings: tc.TrainSettings, train_text_encoder: bool = False,
                     prior: PriorPreservation | None = None,
                     class_images: torch.Tensor | None = None,
                     checkpoint: Path | None = None, sample: TrainingSample | None = None,
                     loss_mask: tc.LossMask | None = None, pivot: pt.PivotSpec | None = None
                     ) -> tuple[Any, TextEncoder, list[float]]:
    """Train for ``settings.steps`` steps (resuming from ``checkpoint`` when an interrupted
    run left one); the trained UNet, the CLIP handle to use it with (the input one when
    the text encoder is frozen and there is no ``pivot``; else over the trained encoder
    or the pivot's table) and the loss per step."""
    import torch

    with dreambooth_training(model, clip, vae, images, captions, settings,
                             train_text_encoder, prior, class_images, loss_mask,
                             pivot) as run:
        order = tc.BatchOrder(run.dataset_size, settings.batch_size, run.generator)

        def state() -> dict[str, Any]:
            return {"params": [p.detach() for p in run.trained],
                    "optimizer": run.optimizer.state_dict(),
                    "generator": run.generator.get_state(), "pending": list(order.pending)}

        def restore(saved: dict[str, Any]) -> None:
            with torch.no_grad():
                for p, value in zip(run.trained, saved["params"], strict=True):
                    p.copy_(value)
            run.optimizer.load_state_dict(saved["optimizer"])
            run.generator.set_state(saved["generator"])
            order.pending = list(saved["pending"])

        saving = None
        if checkpoint:
            # the state is the whole model plus AdamW's two moments: write it less often
            # for big models (and always when interrupted)
            size = sum(p.numel() for p in run.trained)
            saving = tc.Checkpointing(checkpoint, state, restore, rewind=order.streams,
                                      every=50 if size < LARGE_MODEL else 500)
        # the trained copies as handles (the base's patches are merged in them)
        trained_clip = (replace(run.clip, text_encoder=run.text_encoder, patches=())
                        if train_text_encoder else run.clip)
        trained = (replace(model, unet=run.unet, patches=()), trained_clip, vae)
        losses = tc.optimise(ctx, settings, lambda: run.step(order.next()), saving, sample,
                             trained)
    return run.unet, trained_clip, losses


def checkpoint_file(unet: Any, vae: Any | None, text_encoder: Any | None,
                    scheduler_config: dict[str, Any], family: str, info: dict[str, Any],
                    *, latent_scale: float | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a single-file checkpoint in the original (LDM) layout, which
    Load Checkpoint reads: every component, the diffusers configs in
    ``steerflow.config`` (as ``save_original_checkpoint`` writes them) and ``steerflow.*``
    entries from ``info`` (base model hash, steps, parameters). A ``vae`` or
    ``text_encoder`` of None is left out (its config is null), as ComfyUI saves a
    checkpoint whose CLIP or VAE input is empty; Load Checkpoint then gives that output
    as absent (without a VAE, ``latent_scale`` keeps the MODEL's latent scaling factor)."""
    from nodes.diffusion.original_layout import (
        CONFIG_METADATA_KEY,
        _config_dict,
        text_encoder_to_original,
        unet_to_original,
        vae_to_original,
    )

    unet_cfg = _config_dict(unet)
    vae_cfg = _config_dict(vae) if vae is not None else None
    tensors = dict(unet_to_original(unet.state_dict(), unet_cfg))
    if vae is not None:
        tensors.update(vae_to_original(vae.state_dict(), vae_cfg))
    if text_encoder is not None:
        tensors.update(text_encoder_to_original(text_encoder.state_dict()))
    scheduler = json.loads(json.dumps(dict(scheduler_config), default=list))
    scheduler.pop("_use_default_values", None)
    configs = {"family": family, "unet": unet_cfg, "vae": vae_cfg,
               "text_encoder": _config_dict(text_encoder) if text_encoder is not None
               else None, "scheduler": scheduler}
    if vae is None and latent_scale is not None:
        configs["latent_scale"] = float(latent_scale)
    metadata = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(configs, sort_keys=True)}
    metadata.update({f"steerflow.{k}": v if isinstance(v, str) else json.dumps(v)
                     for k, v in info.items()})
    # safetensors refuses tensors that share storage (views): each gets its own
    return {k: v.detach().contiguous().clone() for k, v in tensors.items()}, metadata
