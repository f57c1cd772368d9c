"""ControlNet as a sampler extension, with the math of ``StableDiffusionControlNetPipeline``.

Each applied ControlNet is one :class:`ControlNetResiduals` attached to the
conditionings it steers; at every step it runs the ControlNet on the scaled
latents (``UNetCall.latent_input``), the step's timestep and the CFG text
embeddings, and adds its down/mid residuals to the UNet call. Several ControlNets
sum their residuals, as diffusers' ``MultiControlNetModel`` does.

Per step, as the pipeline: the ControlNet acts only while
``start <= i / n`` and ``(i + 1) / n <= end`` (``controlnet_keep``) and its
residuals are multiplied by ``strength`` (``controlnet_conditioning_scale``). In
guess mode it sees only the conditional half of the batch, the unconditional half
gets zeros, and the ControlNet scales its residuals from 0.1 (shallowest) to 1.0
(mid block) on a log scale.

The control image (IMAGE, 0..1, not normalised to -1..1) must cover the latent:
latent size x the ControlNet's hint downscale (8 for SD). An image of another
size is resized to that size as diffusers' ``VaeImageProcessor`` resizes a tensor
image: ``torch.nn.functional.interpolate`` with its default nearest-neighbour mode,
stretching if the aspect ratio differs. Resize the image beforehand for a smoother
result.

The ControlNet reads each batch role's text as the UNet does, except where the role's
entry says otherwise (:func:`nodes.diffusion.token_weights.controlnet_contexts`): CLIP Text
Encode (Controlnet)'s text replaces it, and tokens masked by key weights (Apply Style
Model's padding) are left out. Rows whose texts differ in length run in separate passes.

A ControlNet-Union (:mod:`nodes.diffusion.controlnet_union`) is the same extension: its
handle carries the control type(s) set by SetUnionControlNetType, and its call gets them
as ``StableDiffusionXLControlNetUnionPipeline`` passes them (``control_type`` /
``control_type_idx``). Chained union applications run the model once each and add up, as
diffusers' ``MultiControlNetUnionModel``; one extension with several images (one per type)
is the pipeline's multi-type call of one union model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from diffusers.image_processor import VaeImageProcessor

from nodes.diffusion.controlnet_union import is_union_model, union_call_kwargs, union_forward
from nodes.diffusion.extensions import SamplerExtension, Step, UNetCall
from nodes.diffusion.interrupt_hooks import make_interruptible
from nodes.diffusion.token_weights import controlnet_contexts

if TYPE_CHECKING:
    from nodes.diffusion.sampling import SamplingRun

#: ``resize(x, height, width)`` for ``[B, C, H, W]`` float images in 0..1
Resize = Callable[[torch.Tensor, int, int], torch.Tensor]


@dataclass(frozen=True)
class ControlNet:
    """CONTROL_NET: a loaded diffusers ``ControlNetModel`` (or ``ControlNetUnionModel``) and
    the name it was loaded as."""

    model: Any
    name: str = ""
    #: a union model's control types (SetUnionControlNetType); () is ComfyUI's "auto".
    #: Plain ControlNets have none.
    control_types: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        make_interruptible(self.model)

    @property
    def is_union(self) -> bool:
        return is_union_model(self.model)

    @property
    def hint_downscale(self) -> int:
        """How much smaller the latent is than the control image (8 for SD ControlNets)."""
        return 2 ** (len(self.model.config.conditioning_embedding_out_channels) - 1)

    @property
    def guess_mode_only(self) -> bool:
        """Shuffle-style ControlNets pool their residuals and always run in guess mode."""
        return bool(self.model.config.global_pool_conditions)


def controlnet_keep(steps: int, start: float, end: float) -> list[float]:
    """1.0 for the steps where the ControlNet acts, else 0.0 (diffusers' ``controlnet_keep``)."""
    return [1.0 - float(i / steps < start or (i + 1) / steps > end) for i in range(steps)]


def resize_like_tensor(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` as the ControlNet pipeline's ``VaeImageProcessor`` resizes a
    tensor image: ``F.interpolate``'s default nearest-neighbour mode, stretching."""
    return VaeImageProcessor(do_normalize=False).resize(x, height, width)


def control_pixels(image: torch.Tensor, height: int, width: int, channels: int = 3, *,
                   resize: Resize = resize_like_tensor, owner: str = "the ControlNet"
                   ) -> torch.Tensor:
    """IMAGE ``[B, H, W, C]`` -> ``[B, channels, height, width]`` float32 in 0..1 (not
    normalised): grey images are repeated to colour, RGBA loses its alpha, colour is
    averaged for 1-channel models (ComfyUI's rule); ``resize`` only if the size differs."""
    if image.dim() != 4:
        raise ValueError(f"a control image must be an IMAGE [B, H, W, C], got {tuple(image.shape)}")
    x = image.movedim(-1, 1).to(torch.float32)
    have = x.shape[1]
    if have != channels:
        if have == 1:
            x = x.repeat(1, channels, 1, 1)
        elif have == 4 and channels == 3:
            x = x[:, :3]  # RGBA: the model reads colour only
        elif have in (3, 4) and channels == 1:
            x = x[:, :3].mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"{owner} expects a {channels}-channel control image, "
                             f"got {have} channels")
    if tuple(x.shape[-2:]) != (height, width):
        x = resize(x, height, width)
    return x


def match_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat a batch of one to ``batch``; refuse any other size that differs."""
    if x.shape[0] == 1:
        return x.repeat_interleave(batch, dim=0)
    if x.shape[0] != batch:
        raise ValueError(f"the control image batch ({x.shape[0]}) must be 1 or match the "
                         f"latent batch ({batch})")
    return x


def prepare_control_image(image: torch.Tensor, height: int, width: int, batch: int,
                          channels: int = 3) -> torch.Tensor:
    """IMAGE ``[B, H, W, C]`` -> ``[batch, C, height, width]`` float32 in 0..1, as the pipeline's
    ``prepare_image`` makes it (before duplication for classifier-free guidance)."""
    return match_batch(control_pixels(image, height, width, channels), batch)


def attached_rows(run: SamplingRun, extension: SamplerExtension, cond_only: bool = False
                  ) -> str:
    """Which CFG halves an extension carried by the conditionings acts on: ``"all"`` (on
    both, or on the model), ``"cond"`` (the positive only, or ``cond_only``) or ``"uncond"``."""
    on_pos = _carries(run.positive, extension)
    on_neg = _carries(run.negative, extension)
    if cond_only or (on_pos and not on_neg):
        return "cond"
    if on_neg and not on_pos:
        return "uncond"
    return "all"


def row_range(run: SamplingRun, rows: str, total: int) -> tuple[int, int]:
    """The batch rows ``[lo, hi)`` of a ``total``-row UNet call that ``rows`` covers (the
    unconditional half is first; without CFG there is none)."""
    batch = run.init_latents.shape[0]
    if not run.do_cfg:
        return (0, total) if rows != "uncond" else (0, 0)
    return {"all": (0, total), "cond": (batch, total), "uncond": (0, batch)}[rows]


@dataclass
class _RunState:
    image: torch.Tensor  # [B, C, H, W] on the ControlNet's device and dtype
    keep: list[float]
    rows: str  # which CFG halves the ControlNet acts on: "all", "cond" or "uncond"
    guess: bool
    #: a union's multi-type call: its other images, one per further type
    more_images: list[torch.Tensor] = field(default_factory=list)


class ControlNetResiduals(SamplerExtension):
    """Adds one ControlNet's residuals to the UNet call at every step where it acts.

    Attach the same object to the positive and the negative conditioning (what
    ControlNetApplyAdvanced does) for diffusers' behaviour: the ControlNet sees the
    whole CFG batch. Attached to the positive only it steers the conditional half
    (the unconditional half gets zeros); to the negative only, the unconditional half.

    ``image`` may be a tuple of images for a union ControlNet with as many types (the
    union pipeline's multi-type call: one pass, the images' features fused).
    """

    handles_large_latents = True  # the control image sets the layout

    def __init__(self, control_net: ControlNet, image: torch.Tensor | tuple[torch.Tensor, ...],
                 strength: float = 1.0, start: float = 0.0, end: float = 1.0,
                 guess_mode: bool = False):
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"ControlNet start ({start}) must be below end ({end}), "
                             "both within 0..1")
        images = tuple(image) if isinstance(image, (tuple, list)) else (image,)
        if len(images) > 1 and not (control_net.is_union
                                    and len(control_net.control_types) == len(images)):
            raise ValueError(f"{len(images)} control images need a union ControlNet with as "
                             "many control types; apply one image per ControlNet instead")
        self.control_net = control_net
        self.image = image
        self.images = images
        self.strength = float(strength)
        self.start = float(start)
        self.end = float(end)
        self.guess_mode = bool(guess_mode) or control_net.guess_mode_only

    def __cache_nbytes__(self) -> dict[str, int]:
        """What a cached CONDITIONING holding this keeps alive: the ControlNet and the image."""
        from engine.cache import value_nbytes

        return value_nbytes((self.control_net, self.image))

    def setup(self, run: SamplingRun) -> None:
        net = self.control_net.model
        _check_fits(self.control_net, run)
        batch, _, h, w = run.init_latents.shape
        factor = self.control_net.hint_downscale
        images = [prepare_control_image(image, h * factor, w * factor, batch,
                                        int(net.config.conditioning_channels)
                                        ).to(device=net.device, dtype=net.dtype)
                  for image in self.images]
        run.state[self] = _RunState(images[0],
                                    controlnet_keep(run.schedule_length, self.start, self.end),
                                    attached_rows(run, self, self.guess_mode), self.guess_mode,
                                    images[1:])

    def unet_inputs(self, run: SamplingRun, step: Step, call: UNetCall) -> None:
        state: _RunState = run.state[self]
        scale = self.strength * state.keep[run.schedule_index(step)]
        # The pipeline adds residuals x 0 here; adding nothing is the same. (Not so for a
        # union's multi-type call: the model scales the images, not its residuals.)
        if scale == 0.0 and not state.more_images:
            return
        total = call.latent_input.shape[0]
        lo, hi = row_range(run, state.rows, total)
        if hi == lo:
            return
        # each role's text: its own (masked tokens left out) or CLIP Text Encode
        # (Controlnet)'s; one pass per stretch of rows whose texts have one length
        passes = [self._residuals(run, call, state, first, end, text, scale)
                  for first, end, text in controlnet_contexts(run, call, lo, hi)]
        down, mid = passes[0] if len(passes) == 1 else (
            [torch.cat(parts) for parts in zip(*(d for d, _ in passes), strict=True)],
            torch.cat([m for _, m in passes]))
        down = [pad_rows(d.to(run.device, run.dtype), lo, hi, total) for d in down]
        call.add_residuals(down, pad_rows(mid.to(run.device, run.dtype), lo, hi, total))

    def _residuals(self, run: SamplingRun, call: UNetCall, state: _RunState, lo: int,
                   hi: int, text: torch.Tensor, scale: float
                   ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The ControlNet's down and mid residuals for the batch rows ``[lo, hi)``."""
        batch = run.init_latents.shape[0]
        net = self.control_net.model
        images = [image.repeat((hi - lo) // batch, 1, 1, 1)
                  for image in (state.image, *state.more_images)]
        control: dict[str, Any] = {"controlnet_cond": images[0], "conditioning_scale": scale}
        if self.control_net.is_union:
            control = union_call_kwargs(net, self.control_net.control_types, images, scale,
                                        hi - lo)
        # SDXL ControlNets take the same pooled/size rows as the UNet (the pipeline's
        # controlnet_added_cond_kwargs: only the conditional rows in guess mode)
        added = {} if call.added_cond_kwargs is None else {"added_cond_kwargs": {
            k: v[lo:hi].to(net.device, net.dtype) for k, v in call.added_cond_kwargs.items()}}
        with union_forward(net, self.control_net.control_types):
            down, mid = net(
                call.latent_input[lo:hi].to(device=net.device, dtype=net.dtype),
                call.timestep,
                encoder_hidden_states=text.to(net.device, net.dtype),
                guess_mode=state.guess,
                return_dict=False,
                **control,
                **added,
            )
        return list(down), mid

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)


def pad_rows(x: torch.Tensor, lo: int, hi: int, total: int) -> torch.Tensor:
    """Zeros for the batch rows the ControlNet did not see (the pipeline's guess-mode padding)."""
    if lo == 0 and hi == total:
        return x
    parts = [torch.zeros_like(x[:1]).expand(lo, *x.shape[1:]), x,
             torch.zeros_like(x[:1]).expand(total - hi, *x.shape[1:])]
    return torch.cat([p for p in parts if p.shape[0]])


def _carries(conditioning: Any, extension: SamplerExtension) -> bool:
    return any(ext is extension for entry in conditioning.entries
               for ext in entry.options.get("extensions", ()))


def _check_fits(control_net: ControlNet, run: SamplingRun) -> None:
    """Refuse a ControlNet made for another model with a message, not a shape error."""
    net, unet = control_net.model.config, run.model.unet.config
    name = control_net.name or "the ControlNet"
    # the family first: SDXL's text width differs from SD's too, and would be named wrong
    if (net.addition_embed_type == "text_time") != (unet.addition_embed_type == "text_time"):
        kind = "an SDXL" if net.addition_embed_type == "text_time" else "an SD 1.x/2.x"
        raise ValueError(f"{name} is {kind} ControlNet; this model is not: load the "
                         "ControlNet made for this checkpoint's family")
    if net.cross_attention_dim != unet.cross_attention_dim:
        raise ValueError(
            f"{name} was made for a model with {net.cross_attention_dim}-wide text embeddings, "
            f"this model has {unet.cross_attention_dim} (an SD 1.x ControlNet on SD 2.x, or "
            "the reverse?)")
    if (tuple(net.block_out_channels) != tuple(unet.block_out_channels)
            or net.layers_per_block != unet.layers_per_block):
        raise ValueError(f"{name} does not match this model's UNet blocks "
                         f"({tuple(net.block_out_channels)} vs {tuple(unet.block_out_channels)})")
    if net.in_channels != run.init_latents.shape[1]:
        raise ValueError(f"{name} expects {net.in_channels}-channel latents, "
                         f"got {run.init_latents.shape[1]}")
