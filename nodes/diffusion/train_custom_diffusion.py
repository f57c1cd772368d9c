"""Custom Diffusion training (Kumari et al. 2023; diffusers' ``train_custom_diffusion.py``).

What trains, as in the script:

* the UNet's cross-attention (``attn2``) key and value projections ``to_k``/``to_v``
  (``crossattn_kv``, the script's default), or also ``to_q`` and ``to_out.0`` with its
  bias (``crossattn``). Each starts as a float32 copy of the (patched) base weight;
  its output replaces the projection's, and the key/value of the first text token
  (BOS) is detached, so no gradient flows through it (the script's
  ``CustomDiffusionAttnProcessor``);
* optionally one modifier token (``<new1>``) added to a copy of the tokenizer, its
  embedding row started from an initializer token's (the textual-inversion helper
  :func:`~nodes.diffusion.train_textual_inversion.extended_clip`). The script zeroes
  the gradient of every other row; AdamW's weight decay still shrinks those rows a
  little each step (1e-7 per step at lr 1e-5), and training sees that, as in the
  script. The script then saves only the modifier row, so what its user loads is the
  base table plus the new row; the CLIP this module returns is that (the other rows
  put back when training ends).

A step: latents (posterior sample), noise, uniform timesteps (``train_common``), the
captions encoded by the text encoder, MSE on the noise (or v); with prior
preservation the class images (drawn by the base model with the project's sampler,
:mod:`~nodes.diffusion.prior_preservation`, as DreamBooth's) and the class prompt form
a second half of the batch whose mean loss is added with ``prior_loss_weight``. The
script's instance loss is ``(mse * mask).sum / mask.sum`` with a one-channel mask
(``[B, 1, h, w]``) from its random-scale augmentation; this node does not augment
(the script's ``--noaug``), so the mask is all ones and the instance loss is the
per-pixel sum over the latent channels, i.e. 4x the plain mean of the other training
nodes (kept, for the script's step sizes and its balance with the prior loss, which
is a plain mean). Then backward, gradient norm clipped to 1.0 over the trained tensors (the script's
``max_grad_norm``), AdamW step (``train_common``'s defaults).

The result is a new MODEL handle carrying the change ``W' − W`` as a dense patch
(:class:`~nodes.diffusion.model_editing.DenseDelta`, applied per call by
:func:`~nodes.diffusion.lora.patched`, as TIME's edits) and a new CLIP handle with
the token; the base handles and cached modules are never changed. The file layout
is ComfyUI's full-weight difference keys (``unet.<module>.diff`` / ``.diff_b``),
which Load LoRA reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodes.diffusion import train_common as tc

if TYPE_CHECKING:
    import torch

    from engine import ExecutionContext
    from nodes.diffusion.handles import DiffusionModel, TextEncoder, Vae
    from nodes.diffusion.lora import LoraPatch
    from nodes.diffusion.prior_preservation import PriorPreservation
    from nodes.diffusion.train_preview import TrainingSample

FREEZE_MODELS = ("crossattn_kv", "crossattn")  # the script's --freeze_model choices
KV = ("to_k", "to_v")
Q_OUT = ("to_q", "to_out.0")
MAX_GRAD_NORM = 1.0


def cross_attention_layers(unet: Any, text_width: int) -> list[str]:
    """The UNet's cross-attention modules reading ``text_width``-wide states (TIME's rule)."""
    from nodes.diffusion.model_editing import cross_attention_dims, cross_attention_projections

    layers = [n.removesuffix(".to_v.weight")
              for n in cross_attention_projections(unet, text_width, with_to_k=False)]
    if not layers:
        dims = sorted(cross_attention_dims(unet))
        raise ValueError(f"the model's cross-attention reads {dims or 'no'}-wide text states "
                         f"but the CLIP gives {text_width}-wide ones: connect the CLIP of the "
                         "same checkpoint as the MODEL")
    return layers


@dataclass
class CrossAttentionWeights:
    """Trainable copies of cross-attention projections: module name → weight (and bias)."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    biases: dict[str, torch.Tensor] = field(default_factory=dict)
    base: dict[str, torch.Tensor] = field(default_factory=dict)  # param name → W

    @classmethod
    def create(cls, unet: Any, layers: list[str], freeze_model: str) -> CrossAttentionWeights:
        """Copies of each layer's ``to_k``/``to_v`` (and ``to_q``/``to_out.0`` for
        ``crossattn``) as they are now (with the handle's patches applied)."""
        import torch

        if freeze_model not in FREEZE_MODELS:
            raise ValueError(f"freeze_model must be one of {', '.join(FREEZE_MODELS)}")
        projections = KV + (Q_OUT if freeze_model == "crossattn" else ())
        modules = dict(unet.named_modules())
        out = cls()
        for layer in layers:
            for proj in projections:
                name = f"{layer}.{proj}"
                linear = modules[name]
                if not isinstance(linear, torch.nn.Linear):
                    raise ValueError(f"{name} is not a linear layer; this UNet's attention is "
                                     "not the one Custom Diffusion trains")
                out.weights[name] = linear.weight.detach().float().clone().requires_grad_(True)
                out.base[f"{name}.weight"] = linear.weight.detach().float().clone()
                # The script's to_k/to_v/to_q copies have no bias (SD's projections have
                # none); to_out.0's bias is trained with its weight.
                if proj == "to_out.0" and linear.bias is not None:
                    out.biases[name] = linear.bias.detach().float().clone().requires_grad_(True)
                    out.base[f"{name}.bias"] = linear.bias.detach().float().clone()
        return out

    def parameters(self) -> list[torch.Tensor]:
        return [*self.weights.values(), *self.biases.values()]

    def named(self) -> dict[str, torch.Tensor]:
        """Parameter name → trained tensor (``<module>.weight`` / ``.bias``)."""
        return {**{f"{m}.weight": w for m, w in self.weights.items()},
                **{f"{m}.bias": b for m, b in self.biases.items()}}

    @contextmanager
    def hooked(self, unet: Any) -> Iterator[None]:
        """Each projection's output computed with the trained copy inside the block; for
        key and value the first token's output carries no gradient (the script's
        processor detaches it)."""
        import torch
        import torch.nn.functional as F

        modules = dict(unet.named_modules())
        handles = []

        def hook_for(name: str) -> Any:
            weight, bias = self.weights[name], self.biases.get(name)
            detach_first = name.endswith(KV)

            def hook(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
                out = F.linear(args[0].to(weight.dtype), weight, bias)
                if detach_first and out.dim() == 3:
                    out = torch.cat([out[:, :1].detach(), out[:, 1:]], dim=1)
                return out.to(output.dtype)

            return hook

        try:
            for name in self.weights:
                handles.append(modules[name].register_forward_hook(hook_for(name)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def deltas(self) -> dict[str, torch.Tensor]:
        """Parameter name → ``W' − W`` (float32)."""
        return {name: (value.detach() - self.base[name]).clone()
                for name, value in self.named().items()}

    def patch(self, label: str) -> LoraPatch:
        """The change as a model patch (strength 1), applied like a LoRA per call."""
        from nodes.diffusion.lora import LoraPatch
        from nodes.diffusion.model_editing import DenseDelta

        return LoraPatch(label, 1.0, tuple((name, DenseDelta(delta))
                                           for name, delta in self.deltas().items()))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """ComfyUI's difference keys: ``unet.<module>.diff`` (weight) / ``.diff_b`` (bias)."""
        out = {}
        for name, delta in self.deltas().items():
            module, _, kind = name.rpartition(".")
            out[f"unet.{module}.{'diff' if kind == 'weight' else 'diff_b'}"] = delta
        return out


def modifier_problems(tokenizer: Any, modifier: str, initializer: str) -> list[tuple[str, str]]:
    """``[(input, message)]`` for a modifier the tokenizer knows or a bad initializer."""
    from nodes.diffusion.train_textual_inversion import token_problems

    renamed = {"placeholder_token": "modifier_token"}
    return [(renamed.get(k, k), m.replace("placeholder", "modifier token"))
            for k, m in token_problems(tokenizer, modifier, initializer, 1)]


@dataclass
class CustomDiffusionTraining:
    """One run's state; :meth:`step` is one optimiser step."""

    model: DiffusionModel
    clip: TextEncoder  # with the modifier token when there is one
    layers: CrossAttentionWeights
    token_id: int | None
    posterior: tc.Posterior  # instance images, then class images
    ids: torch.Tensor  # caption token ids per row of the posterior
    n_instance: int
    n_class: int
    prior_loss_weight: float | None  # None: no prior preservation
    scheduler: Any
    optimizer: Any
    generator: torch.Generator
    original: torch.Tensor | None  # the token table before training
    context: torch.Tensor | None = None  # every row's encoding when no token trains

    @property
    def table(self) -> torch.Tensor | None:
        return (self.clip.text_encoder.get_input_embeddings().weight
                if self.token_id is not None else None)

    @property
    def dataset_size(self) -> int:
        """The script's dataset length: ``max(n_instance, n_class)`` with prior preservation."""
        return (max(self.n_instance, self.n_class) if self.prior_loss_weight is not None
                else self.n_instance)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Posterior rows of dataset items ``index`` (the script's dataset: item ``i`` is
        instance ``i % n_instance`` and class image ``i % n_class``), instances first."""
        import torch

        instance = index % self.n_instance
        if self.prior_loss_weight is None:
            return instance
        return torch.cat([instance, self.n_instance + index % self.n_class])

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        if self.context is not None:
            return self.context[rows]
        return self.clip.text_encoder(self.ids[rows])[0]

    def trained(self) -> list[torch.Tensor]:
        table = self.table
        return ([table] if table is not None else []) + self.layers.parameters()

    def step(self, index: torch.Tensor, noise: torch.Tensor | None = None,
             timesteps: torch.Tensor | None = None, latents: torch.Tensor | None = None
             ) -> float:
        """One step on dataset items ``index``; latents, noise and timesteps are drawn (in
        that order) unless given, for the whole batch (instances, then class images)."""
        import torch
        import torch.nn.functional as F

        rows = self.rows(index)
        if latents is None:
            latents = self.posterior.sample(rows, self.generator)
        if noise is None or timesteps is None:
            noise, timesteps = tc.draw_noise(latents, self.scheduler, self.generator)
        pred, target = tc.prediction_and_target(self.model.unet, self.scheduler, latents,
                                                noise, timesteps, self.encode(rows))
        n = len(index)
        # The script's masked loss, (mse * mask).sum / mask.sum with a one-channel mask (of
        # ones without a loss_mask): per image, channels x the weighted mean over pixels.
        weights = None if self.posterior.weights is None else self.posterior.weights[rows[:n]]
        loss = latents.shape[1] * tc.masked_mse(pred[:n], target[:n], weights)
        if self.prior_loss_weight is not None:
            loss = loss + self.prior_loss_weight * F.mse_loss(pred[n:].float(),
                                                              target[n:].float())
        loss.backward()
        table = self.table
        if table is not None and table.grad is not None:
            keep = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)
            keep[self.token_id] = False
            table.grad[keep] = 0  # the script: only the modifier row learns
        torch.nn.utils.clip_grad_norm_(self.trained(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return float(loss.detach())

    def finish(self) -> None:
        """Put back every row but the modifier's (the script's saved result: base table
        plus the learned row; see the module doc)."""
        import torch

        table = self.table
        if table is not None and self.original is not None:
            with torch.no_grad():
                row = table[self.token_id].clone()
                table.copy_(self.original)
                table[self.token_id] = row

    def vector(self) -> torch.Tensor | None:
        """The learned modifier embedding ``[1, dim]`` (None without a modifier)."""
        table = self.table
        return None if table is None else table[self.token_id:self.token_id + 1].detach().clone()


@dataclass(frozen=True)
class CustomDiffusionSpec:
    """What to train besides the optimisation settings."""

    freeze_model: str = "crossattn_kv"
    modifier_token: str = ""  # empty: no new token, the text encoder stays frozen
    initializer_token: str = "pll"


@contextmanager
def custom_diffusion_training(model: DiffusionModel, clip: TextEncoder, vae: Vae,
                              images: torch.Tensor, captions: list[str],
                              spec: CustomDiffusionSpec, settings: tc.TrainSettings,
                              prior: PriorPreservation | None = None,
                              class_images: torch.Tensor | None = None,
                              loss_mask: tc.LossMask | None = None
                              ) -> Iterator[CustomDiffusionTraining]:
    """Set up a run: base weights frozen (with the handles' patches applied), the trained
    copies hooked in, gradient checkpointing as asked; all undone on exit."""
    import torch

    from nodes.diffusion.lora import patched
    from nodes.diffusion.train_textual_inversion import extended_clip

    if (prior is None) != (class_images is None):
        raise ValueError("prior preservation needs both its options and the class images")
    modifier = spec.modifier_token
    trained_clip, token_id = clip, None
    if modifier:
        problems = modifier_problems(clip.tokenizer, modifier, spec.initializer_token)
        if problems:
            raise ValueError("; ".join(message for _, message in problems))
        missing = [i + 1 for i, c in enumerate(captions) if modifier not in c]
        if missing:
            raise ValueError(f"caption(s) {missing[:5]} do not contain the modifier token "
                             f"{modifier!r}: write it before the category word, e.g. "
                             f"'photo of a {modifier} dog'")
        init_id = clip.tokenizer.encode(spec.initializer_token, add_special_tokens=False)[0]
        trained_clip = extended_clip(clip, [modifier], init_id)
        token_id = int(trained_clip.tokenizer.convert_tokens_to_ids(modifier))
    tc.check_resolution(model.unet, vae, settings.resolution)
    layers = cross_attention_layers(model.unet,
                                    int(trained_clip.text_encoder.config.hidden_size))
    pixels = tc.prepare_pixels(images, settings.resolution)
    rows_captions = list(captions)
    if class_images is not None and prior is not None:
        pixels = torch.cat([pixels, tc.prepare_pixels(class_images, settings.resolution)])
        rows_captions += prior.captions(int(class_images.shape[0]))
    unet, encoder = model.unet, trained_clip.text_encoder
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    with ExitStack() as stack:
        table = encoder.get_input_embeddings().weight if token_id is not None else None
        if table is not None:  # the new table (not shared with the base): no gradient after
            stack.callback(table.requires_grad_, False)
        stack.enter_context(tc.frozen(unet, encoder, vae.vae))
        stack.enter_context(patched(unet, model.patches))
        stack.enter_context(patched(encoder, clip.patches))
        weights = CrossAttentionWeights.create(unet, layers, spec.freeze_model)
        ids = tc.tokenize(trained_clip.tokenizer, rows_captions, encoder.device)
        context = None
        with torch.no_grad():
            posterior = tc.encode_posterior(vae.scaled_for(model.latent_scale), pixels)
            if loss_mask is not None:
                posterior = loss_mask.applied(posterior, images, settings.resolution)
            if table is None:  # nothing in the text encoder trains: encode once
                context = encoder(ids)[0]
        if table is not None:
            table.requires_grad_(True)
        stack.enter_context(weights.hooked(unet))
        stack.enter_context(tc.unet_checkpointing(unet, settings.gradient_checkpointing))
        params = ([table] if table is not None else []) + weights.parameters()
        yield CustomDiffusionTraining(
            model=model, clip=trained_clip, layers=weights, token_id=token_id,
            posterior=posterior, ids=ids, n_instance=int(images.shape[0]),
            n_class=0 if class_images is None else int(class_images.shape[0]),
            prior_loss_weight=None if prior is None else prior.prior_loss_weight,
            scheduler=tc.noise_scheduler(model.scheduler_config),
            optimizer=tc.make_optimizer(params, settings.learning_rate),
            generator=generator, context=context,
            original=table.detach().clone() if table is not None else None)


def train_custom_diffusion(ctx: ExecutionContext, model: DiffusionModel, clip: TextEncoder,
                           vae: Vae, images: torch.Tensor, captions: list[str],
                           spec: CustomDiffusionSpec, settings: tc.TrainSettings,
                           prior: PriorPreservation | None = None,
                           class_images: torch.Tensor | None = None,
                           checkpoint: Path | None = None,
                           sample: TrainingSample | None = None,
                           loss_mask: tc.LossMask | None = None
                           ) -> tuple[CrossAttentionWeights, TextEncoder, torch.Tensor | None,
                                      list[float]]:
    """Train (resuming from ``checkpoint`` when an interrupted run left one); the trained
    weights, the CLIP handle (with the modifier token), its vector and the loss per step."""
    import torch

    with custom_diffusion_training(model, clip, vae, images, captions, spec, settings,
                                   prior, class_images, loss_mask) as run:
        order = tc.BatchOrder(run.dataset_size, settings.batch_size, run.generator)
        params = run.layers.parameters()

        def state() -> dict[str, Any]:
            saved: dict[str, Any] = {"params": [p.detach().clone() for p in params],
                                     "optimizer": run.optimizer.state_dict(),
                                     "generator": run.generator.get_state(),
                                     "pending": list(order.pending)}
            if run.table is not None:  # the other rows drift with weight decay too
                saved["table"] = run.table.detach().clone()
            return saved

        def restore(saved: dict[str, Any]) -> None:
            with torch.no_grad():
                for p, value in zip(params, saved["params"], strict=True):
                    p.copy_(value)
                if run.table is not None:
                    run.table.copy_(saved["table"])
            run.optimizer.load_state_dict(saved["optimizer"])
            run.generator.set_state(saved["generator"])
            order.pending = list(saved["pending"])

        saving = (tc.Checkpointing(checkpoint, state, restore, rewind=order.streams)
                  if checkpoint else None)
        losses = tc.optimise(ctx, settings, lambda: run.step(order.next()), saving, sample,
                             (run.model, run.clip, vae))
        run.finish()
        return run.layers, run.clip, run.vector(), losses
