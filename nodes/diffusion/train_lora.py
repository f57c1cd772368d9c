"""LoRA training (diffusers' ``train_text_to_image_lora.py``) on a MODEL/CLIP handle.

The LoRA layers are PEFT's: for a target ``nn.Linear`` with weight ``W``,
``y = x Wᵀ + (alpha / rank) · (x Aᵀ) Bᵀ`` with ``A [rank, in]`` initialised
kaiming-uniform (a = √5, PEFT's default) and ``B [out, rank]`` zero, dropout 0; for a
target ``nn.Conv2d`` (a ResNet's ``conv1``/``conv2``, ``proj_in``/``proj_out``), as
PEFT's ``Conv2d`` layer: ``A`` is a convolution ``[rank, in, k, k]`` with the target's
stride, padding and dilation, ``B`` a 1x1 convolution ``[out, rank, 1, 1]``.
They are added by forward hooks for the duration of training, so the cached
modules are never changed; the result is a :class:`LoraPatch` per component (the
sampler and the prompt encoder add ``scale · B @ A`` to the weights per call) and,
when asked, a PEFT-layout safetensors file that ``LoraLoader`` (and diffusers'
``load_lora_weights``) reads.

A step: the batch's latents, noise and timesteps (see ``train_common``), the
captions encoded by the (LoRA'd, when trained) text encoder, the loss, backward,
gradient norm clipped to 1.0 (the script's ``max_grad_norm``), AdamW step, then the
learning-rate schedule's step; ``snr_gamma`` and ``noise_offset`` as the script's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodes.diffusion import pivotal_tuning as pt
from nodes.diffusion import train_common as tc
from nodes.diffusion.pivotal_tuning import PivotSpec, TokenRows

if TYPE_CHECKING:
    import torch

    from engine import ExecutionContext
    from nodes.diffusion.handles import DiffusionModel, TextEncoder, Vae
    from nodes.diffusion.lora import LoraPatch
    from nodes.diffusion.train_preview import TrainingSample

UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")  # train_text_to_image_lora.py's
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # diffusers' text-encoder LoRA
MAX_GRAD_NORM = 1.0


def parse_targets(text: str) -> tuple[str, ...]:
    """Comma-separated module names (``to_k, to_q``) → a tuple without blanks or repeats."""
    return tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))


def target_names(root: Any, targets: Sequence[str]) -> list[str]:
    """Modules PEFT's rule selects: the name is a target or ends with ``.<target>``."""
    import torch

    modules = dict(root.named_modules())
    found = [name for name in modules
             if any(name == t or name.endswith("." + t) for t in targets)]
    bad = [n for n in found if not (
        isinstance(modules[n], torch.nn.Linear)
        or (isinstance(modules[n], torch.nn.Conv2d) and modules[n].groups == 1
             and modules[n].padding_mode == "zeros"))]
    if bad:
        raise ValueError(f"target modules must be linear or convolution layers; "
                         f"{', '.join(bad[:3])} are not (pick attention projections such as "
                         "to_q, to_k, to_v, to_out.0, or convolutions such as conv1, conv2)")
    return found


@dataclass
class LoraLayers:
    """Trainable ``A``/``B`` per module of one component, PEFT-initialised."""

    rank: int
    alpha: float
    down: dict[str, torch.Tensor] = field(default_factory=dict)
    up: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def create(cls, root: Any, names: Sequence[str], rank: int, alpha: float,
               generator: torch.Generator) -> LoraLayers:
        import torch

        layers = cls(rank, alpha)
        modules = dict(root.named_modules())
        for name in names:
            weight = modules[name].weight
            # A conv's A keeps the kernel ([rank, in, k, k]); its B is 1x1 (PEFT's Conv2d).
            kernel, ones = tuple(weight.shape[2:]), (1,) * (weight.dim() - 2)
            down = torch.empty(rank, weight.shape[1], *kernel, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=generator)
            layers.down[name] = down.to(weight.device).requires_grad_(True)
            layers.up[name] = torch.zeros(weight.shape[0], rank, *ones, device=weight.device,
                                          requires_grad=True)
        return layers

    def parameters(self) -> list[torch.Tensor]:
        return [t for name in self.down for t in (self.down[name], self.up[name])]

    @contextmanager
    def hooked(self, root: Any) -> Iterator[None]:
        """Add ``scale · B(A(x))`` to each target's output inside the block (PEFT's order)."""
        import torch.nn.functional as F

        modules = dict(root.named_modules())
        handles = []

        def hook_for(name: str) -> Any:
            down, up, scale = self.down[name], self.up[name], self.scale

            def hook(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
                x = args[0].to(down.dtype)
                if down.dim() == 4:
                    hidden = F.conv2d(x, down, None, module.stride, module.padding,
                                      module.dilation)
                    delta = F.conv2d(hidden, up) * scale
                else:
                    delta = F.linear(F.linear(x, down), up) * scale
                return output + delta.to(output.dtype)  # a half-precision model stays so

            return hook

        try:
            for name in self.down:
                handles.append(modules[name].register_forward_hook(hook_for(name)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def patch(self, name: str) -> LoraPatch:
        """The trained update as the patch the loaders produce (strength 1)."""
        from nodes.diffusion.lora import LoraPatch, LoraWeight

        return LoraPatch(name, 1.0, tuple(
            (f"{module}.weight", LoraWeight(self.down[module].detach().clone(),
                                            self.up[module].detach().clone(), self.scale))
            for module in self.down))

    def state_dict(self, component: str) -> dict[str, torch.Tensor]:
        """PEFT/diffusers keys: ``<component>.<module>.lora_A.weight`` / ``lora_B.weight``."""
        out = {}
        for module in self.down:
            out[f"{component}.{module}.lora_A.weight"] = self.down[module].detach()
            out[f"{component}.{module}.lora_B.weight"] = self.up[module].detach()
        return out


@dataclass(frozen=True)
class LoraSpec:
    """What to train: rank, alpha and target modules per component."""

    rank: int
    alpha: float
    unet_targets: tuple[str, ...] = UNET_TARGETS
    text_targets: tuple[str, ...] = ()  # empty: the text encoder is not trained


@dataclass
class LoraTraining:
    """Everything one training run holds; :meth:`step` is one optimiser step."""

    model: DiffusionModel
    clip: TextEncoder
    spec: LoraSpec
    posterior: tc.Posterior
    ids: torch.Tensor  # [images, 77] caption token ids
    scheduler: Any
    unet_layers: LoraLayers
    text_layers: LoraLayers | None
    optimizer: Any
    generator: torch.Generator
    settings: tc.TrainSettings
    lr_scheduler: Any = None
    context: torch.Tensor | None = None  # fixed caption encodings when the TE is not trained
    pivot: PivotSpec | None = None
    token_rows: TokenRows | None = None  # the pivot's trained rows
    steps_done: int = 0

    def encode(self, index: torch.Tensor) -> torch.Tensor:
        import torch

        if self.text_layers is None and self.pivot is None:
            if self.context is None:
                with torch.no_grad():
                    self.context = self.clip.text_encoder(self.ids)[0]
            return self.context[index]
        return self.clip.text_encoder(self.ids[index])[0]

    def step(self, index: torch.Tensor, noise: torch.Tensor | None = None,
             timesteps: torch.Tensor | None = None, latents: torch.Tensor | None = None
             ) -> float:
        """One step on images ``index``; noise/timesteps/latents drawn unless given."""
        import torch

        loss = tc.batch_loss(self.model.unet, self.scheduler, self.posterior, self.generator,
                             index, self.encode(index), noise, timesteps, latents,
                             snr_gamma=self.settings.snr_gamma,
                             noise_offset=self.settings.noise_offset)
        loss.backward()
        params = self.unet_layers.parameters() + (
            self.text_layers.parameters() if self.text_layers else [])
        pt.hold_back(params, self.pivot, self.steps_done)
        if self.token_rows is not None:
            params = [*params, self.token_rows.rows]
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None],
                                       MAX_GRAD_NORM)
        self.optimizer.step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.optimizer.zero_grad()
        self.steps_done += 1
        return float(loss.detach())


@contextmanager
def lora_training(model: DiffusionModel, clip: TextEncoder, vae: Vae, images: torch.Tensor,
                  captions: list[str], spec: LoraSpec, settings: tc.TrainSettings,
                  loss_mask: tc.LossMask | None = None, pivot: PivotSpec | None = None
                  ) -> Iterator[LoraTraining]:
    """Set up a run: frozen base weights (with the handles' own LoRA patches applied),
    LoRA hooks on, gradient checkpointing as asked; all undone on exit. ``loss_mask``
    weights the loss per pixel (a masked loss). With ``pivot``, the run's CLIP is a new
    handle (textual inversion's copy of the table, and of the tokenizer for a new
    placeholder) whose concept rows train with the LoRA."""
    import torch

    from nodes.diffusion.lora import patched

    base_clip, token_ids = clip, []
    if pivot is not None:
        clip, token_ids = pt.pivot_clip(clip, pivot)
    unet, encoder = model.unet, clip.text_encoder
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    tc.check_resolution(model.unet, vae, settings.resolution)
    pixels = tc.prepare_pixels(images, settings.resolution)
    with ExitStack() as stack:
        stack.enter_context(tc.frozen(unet, encoder, vae.vae))
        stack.enter_context(patched(unet, model.patches))
        stack.enter_context(patched(encoder, base_clip.patches))
        posterior = tc.encode_posterior(vae.scaled_for(model.latent_scale), pixels)
        if loss_mask is not None:
            posterior = loss_mask.applied(posterior, images, settings.resolution)
        names = target_names(unet, spec.unet_targets)
        if not names:
            raise ValueError(f"no UNet module matches target_modules "
                             f"{', '.join(spec.unet_targets)}; use names such as to_q, to_k, "
                             "to_v, to_out.0")
        unet_layers = LoraLayers.create(unet, names, spec.rank, spec.alpha, generator)
        text_layers = None
        if spec.text_targets:
            text_names = target_names(encoder, spec.text_targets)
            text_layers = LoraLayers.create(encoder, text_names, spec.rank, spec.alpha,
                                            generator)
            stack.enter_context(text_layers.hooked(encoder))
        stack.enter_context(unet_layers.hooked(unet))
        stack.enter_context(tc.unet_checkpointing(unet, settings.gradient_checkpointing))
        params = unet_layers.parameters() + (text_layers.parameters() if text_layers else [])
        optimizer = tc.make_optimizer(params, settings.learning_rate)
        ids = tc.tokenize(clip.tokenizer, captions, encoder.device)
        token_rows = (pt.attach(stack, encoder, ids, token_ids, pivot, optimizer)
                      if pivot is not None else None)
        yield LoraTraining(
            model=model, clip=clip, spec=spec, posterior=posterior, ids=ids,
            scheduler=tc.noise_scheduler(model.scheduler_config), unet_layers=unet_layers,
            text_layers=text_layers, optimizer=optimizer, generator=generator,
            settings=settings, lr_scheduler=tc.make_lr_scheduler(optimizer, settings),
            pivot=pivot, token_rows=token_rows)


def train_lora(ctx: ExecutionContext, model: DiffusionModel, clip: TextEncoder, vae: Vae,
               images: torch.Tensor, captions: list[str], spec: LoraSpec,
               settings: tc.TrainSettings, checkpoint: Path | None = None, *,
               sample: TrainingSample | None = None, loss_mask: tc.LossMask | None = None,
               pivot: PivotSpec | None = None
               ) -> tuple[LoraLayers, LoraLayers | None, list[float], TextEncoder]:
    """Train for ``settings.steps`` steps (resuming from ``checkpoint`` when an interrupted
    run left one); the trained layers and the loss per step. With ``sample``, an image is
    drawn with the LoRA as it is every ``sample.every`` steps (``train_preview``). The
    CLIP handle returned is the input one, or with ``pivot`` the one with the trained
    concept rows."""
    import torch

    with lora_training(model, clip, vae, images, captions, spec, settings,
                       loss_mask, pivot) as run:
        order = tc.BatchOrder(images.shape[0], settings.batch_size, run.generator)
        params = run.unet_layers.parameters() + (
            run.text_layers.parameters() if run.text_layers else []) + (
            [run.token_rows.rows] if run.token_rows is not None else [])

        def state() -> dict[str, Any]:
            return {"params": [p.detach().clone() for p in params],
                    "optimizer": run.optimizer.state_dict(),
                    "lr_scheduler": run.lr_scheduler.state_dict(),
                    "generator": run.generator.get_state(), "pending": list(order.pending)}

        def restore(saved: dict[str, Any]) -> None:
            with torch.no_grad():
                for p, value in zip(params, saved["params"], strict=True):
                    p.copy_(value)
            run.optimizer.load_state_dict(saved["optimizer"])
            run.lr_scheduler.load_state_dict(saved["lr_scheduler"])
            run.generator.set_state(saved["generator"])
            order.pending = list(saved["pending"])

        saving = (tc.Checkpointing(checkpoint, state, restore, rewind=order.streams)
                  if checkpoint else None)
        losses = tc.optimise(ctx, settings, lambda: run.step(order.next()), saving, sample,
                             (run.model, run.clip, vae))
        return run.unet_layers, run.text_layers, losses, run.clip


def lora_file(unet_layers: LoraLayers, text_layers: LoraLayers | None, spec: LoraSpec,
              info: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of the PEFT-layout file (diffusers' adapter metadata entry,
    plus ``steerflow.*`` entries: base model hash, steps, parameters)."""
    from nodes.diffusion.lora import METADATA_KEY

    tensors = unet_layers.state_dict("unet")
    adapter: dict[str, Any] = {"unet.r": spec.rank, "unet.lora_alpha": spec.alpha,
                               "unet.target_modules": list(spec.unet_targets)}
    if text_layers is not None:
        tensors.update(text_layers.state_dict("text_encoder"))
        adapter.update({"text_encoder.r": spec.rank, "text_encoder.lora_alpha": spec.alpha,
                        "text_encoder.target_modules": list(spec.text_targets)})
    metadata = {METADATA_KEY: json.dumps(adapter), "format": "pt"}
    metadata.update({f"steerflow.{k}": v if isinstance(v, str) else json.dumps(v)
                     for k, v in info.items()})
    return tensors, metadata
