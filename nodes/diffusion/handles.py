"""The values that travel between diffusion nodes (MODEL, CLIP, VAE, CONDITIONING, LATENT).

Conventions (the same as ComfyUI's, so custom nodes feel at home):
IMAGE is a float tensor ``[B, H, W, C]`` in 0..1; MASK is ``[B, H, W]`` in 0..1.
LATENT samples live in the space the UNet sees, i.e. already multiplied by the
VAE's scaling factor, as in diffusers' pipelines.

Handles are immutable views: a node that changes a model returns a new handle
and never mutates the cached one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from nodes.diffusion.interrupt_hooks import make_interruptible

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    # Pydantic resolves node input annotations (and the fields of these dataclasses)
    # when a node class is defined. At run time ``Tensor`` is ``Any``, so defining,
    # listing and validating nodes never imports torch (seconds); type checkers see
    # the real class.
    Tensor = Any


@dataclass(frozen=True)
class DiffusionModel:
    """MODEL: the denoising UNet, its scheduler config and attached extensions."""

    unet: Any
    scheduler_config: dict[str, Any]
    family: str = "sd1"
    extensions: tuple[Any, ...] = ()
    # LoRA updates (nodes.diffusion.lora.LoraPatch) the sampler applies per run.
    patches: tuple[Any, ...] = ()
    #: the scaling factor of the VAE this model's latents belong to (latents in its
    #: space are the VAE's raw latents times it); None where no loader knew it
    latent_scale: float | None = None

    def __post_init__(self) -> None:
        make_interruptible(self.unet)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def with_extension(self, extension: Any) -> DiffusionModel:
        return replace(self, extensions=(*self.extensions, extension))


@dataclass(frozen=True)
class TextEncoder:
    """CLIP: tokenizer and text encoder."""

    text_encoder: Any
    tokenizer: Any
    family: str = "sd1"
    # LoRA updates (nodes.diffusion.lora.LoraPatch) applied while encoding.
    patches: tuple[Any, ...] = ()
    # ComfyUI's CLIP Set Last Layer: the encoder layer whose output (final layer norm
    # applied, as diffusers' clip_skip) is the prompt embedding; -1 the last, -2 the one
    # before it ("clip skip 2" = diffusers' clip_skip=1). None: not set, the model's
    # default (SD 1.x/2.x: the last layer; SDXL: the penultimate, without the final norm).
    stop_at_clip_layer: int | None = None
    # SDXL's second encoder (OpenCLIP bigG, with projection: the pooled output) and its
    # tokenizer; the SDXL refiner has only this one (``text_encoder`` is None).
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    # LoRA updates for ``text_encoder_2`` (kohya ``lora_te2_``, diffusers ``text_encoder_2.``)
    patches_2: tuple[Any, ...] = ()
    # Set CLIP Hooks: the HOOKS every conditioning encoded with this CLIP carries (None:
    # none), and with ``schedule_clip`` the (timestep range, CLIP) stretches a prompt is
    # encoded with, one conditioning entry each
    cond_hooks: Any = None
    clip_schedule: tuple[tuple[tuple[float, float], Any], ...] = ()

    @property
    def device(self) -> torch.device:
        encoder = self.text_encoder if self.text_encoder is not None else self.text_encoder_2
        return encoder.device


#: set on a VAE module whose file stated no latent scaling factor (a bare VAE file, such as
#: sdxl_vae.safetensors: SD 1.x's factor was assumed, and SD 1.x and SDXL VAEs have the
#: same layers): the latents' or the model's factor is the one then (as in ComfyUI, where
#: the model owns the scaling)
UNSTATED_SCALE = "steerflow_scale_unstated"


@dataclass(frozen=True)
class Vae:
    """VAE: the autoencoder between pixels and latents."""

    vae: Any
    #: the scaling factor to use instead of the config's (see :meth:`scaled_for`)
    scale: float | None = None

    def __post_init__(self) -> None:
        make_interruptible(self.vae)

    @property
    def scaling_factor(self) -> float:
        if self.scale is not None:
            return float(self.scale)
        return float(self.vae.config.scaling_factor)

    @property
    def scale_stated(self) -> bool:
        """Whether the VAE's own files gave its latent scaling factor."""
        return not getattr(self.vae, UNSTATED_SCALE, False)

    def scaled_for(self, factor: float | None) -> Vae:
        """This VAE at ``factor`` (the latents' or the model's) where its file stated none
        (else, or without a factor, itself)."""
        if self.scale_stated or not factor:
            return self
        return Vae(self.vae, float(factor))

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def latent(self, samples: Tensor, **fields: Any) -> Latent:
        """``samples`` this VAE encoded (or sized for it): the LATENT knows its scaling
        (or that it was assumed) and its downscale."""
        return Latent(samples, scaling_factor=self.scaling_factor, downscale=self.downscale,
                      scale_assumed=not self.scale_stated and self.scale is None, **fields)


class AbsentPartError(ValueError, AttributeError):
    """A part a checkpoint file does not hold (its VAE or its text encoder) was used (an
    AttributeError too, so ``hasattr`` and ``getattr`` with a default see nothing there)."""


class _AbsentPart:
    """Stands in for the model of a part a checkpoint lacks: any use says so."""

    def __init__(self, message: str) -> None:
        self._message = message

    def __getattr__(self, name: str) -> Any:
        raise AbsentPartError(self._message)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AbsentPartError(self._message)


def is_absent(model: Any) -> bool:
    """True for the stand-in of a part the checkpoint did not hold."""
    return isinstance(model, _AbsentPart)


class MissingVae(Vae):
    """The VAE output of a checkpoint file that holds none (ComfyUI gives None there):
    the graph runs as long as nothing uses it, and a node that does fails saying what to
    load instead."""

    def __init__(self, checkpoint: str) -> None:
        super().__init__(_AbsentPart(
            f"the checkpoint {checkpoint!r} holds no VAE, so its VAE output cannot be used: "
            "load one with Load VAE (models/vae, or a full checkpoint's) and link that VAE "
            "here instead"))

    def __post_init__(self) -> None:
        pass  # nothing to hook


def missing_text_encoder(checkpoint: str, family: str) -> TextEncoder:
    """The CLIP output of a checkpoint file that holds no text encoder (ComfyUI gives None
    there): as with :class:`MissingVae`, only a node that uses it fails, saying what to
    load instead; nodes that only pass it on (Load LoRA) keep it as it is."""
    return TextEncoder(_AbsentPart(
        f"the checkpoint {checkpoint!r} holds no text encoder, so its CLIP output cannot "
        "be used: load one with Load CLIP (models/text_encoders, or a full checkpoint's) "
        "and link that CLIP here instead"), None, family)


@dataclass(frozen=True)
class CondEntry:
    """One conditioning: prompt embeddings ``[1, tokens, dim]`` and options.

    Options use ComfyUI's keys where they exist: SDXL's ``pooled_output`` ``[1, dim]``
    and size conditioning (``width``, ``height``, ``crop_w``, ``crop_h``,
    ``target_width``, ``target_height``, the refiner's ``aesthetic_score``), which the
    sampler turns into the UNet's ``added_cond_kwargs`` (:mod:`nodes.diffusion.sdxl`).
    """

    embeds: Tensor
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Conditioning:
    """CONDITIONING: one or more entries (combined by the sampler)."""

    entries: tuple[CondEntry, ...]

    @property
    def embeds(self) -> Tensor:
        """The first entry's embeddings: the batch's own; further entries (Conditioning
        Combine) are evaluated as extra batch entries and their predictions averaged."""
        return self.entries[0].embeds


@dataclass(frozen=True)
class InpaintCondition:
    """What a 9-channel inpainting UNet sees next to the latents at every step.

    ``mask`` ``[B, 1, h, w]`` is binary (1 = repaint) at the latent size and
    ``masked_latents`` ``[B, C, h, w]`` encodes the image with the masked pixels
    grey; the sampler concatenates ``[latents, mask, masked_latents]``.
    """

    mask: Tensor
    masked_latents: Tensor


@dataclass(frozen=True)
class Latent:
    """LATENT: samples ``[B, C, h, w]`` and an optional noise mask ``[B, 1, h, w]``.

    ``inpaint`` carries the extra input of 9-channel inpainting models;
    ``assumed_downscale`` is the VAE factor an Empty Latent Image without its ``vae``
    input assumed (SD's 8), so decoding with another VAE can say why the image is
    smaller or larger than asked. ``extension_results`` is what the sampler's extensions
    reported about the run that made these samples (``SamplerExtension.results``, e.g.
    LEDITS++'s edit region); only samplers set it. ``scaling_factor`` is the VAE
    scaling these samples carry (diffusers' convention: raw VAE latents times it), where
    a node knew it (VAE Encode, Empty Latent Image with its vae, a sampler whose model
    came with its VAE); ComfyUI's ``.latent`` files hold the raw latents. ``downscale``
    is that VAE's factor between image and latent pixels, known in the same cases: nodes
    that take sizes in image pixels read it when their ``vae`` is not linked.
    """

    samples: Tensor
    noise_mask: Tensor | None = None
    inpaint: InpaintCondition | None = None
    assumed_downscale: int | None = None
    extension_results: tuple[tuple[str, Tensor], ...] = ()
    #: which item of an earlier batch each row was (ComfyUI's ``batch_index``): the
    #: sampler gives row k the initial noise of that item; None: rows 0, 1, ...
    batch_index: tuple[int, ...] | None = None
    scaling_factor: float | None = None
    downscale: int | None = None
    #: ``scaling_factor`` was assumed (SD 1.x's, by a VAE whose file stated none): a
    #: sampler rescales the samples to its model's
    scale_assumed: bool = False

    @property
    def batch_size(self) -> int:
        return int(self.samples.shape[0])

    def extension_result(self, name: str) -> Tensor | None:
        """The tensor an extension reported as ``name`` for these samples, or None."""
        return dict(self.extension_results).get(name)

    def sampled(self, model: DiffusionModel, samples: Tensor,
                results: dict[str, Tensor] | None = None) -> Latent:
        """These latents after a sampler ran ``model`` on them: the new samples, mask and
        inpaint data kept (a second pass sees the same latent), the VAE scaling known
        from the model where these latents did not say."""
        resized = tuple(samples.shape) != tuple(self.samples.shape)
        return replace(self, samples=samples,
                       extension_results=tuple((results or {}).items()),
                       # an assumed scaling was the model's for the run (fit_empty_latent)
                       scaling_factor=model.latent_scale if self.scale_assumed
                       else self.scaling_factor or model.latent_scale, scale_assumed=False,
                       downscale=self.downscale or linked_downscale(model.unet),
                       # refitted to the model's VAE (see fit_empty_latent): no longer assumed
                       assumed_downscale=None if resized else self.assumed_downscale)


def linked_downscale(unet: Any) -> int | None:
    """The downscale of the VAE the checkpoint loader paired with ``unet``, if any."""
    from nodes.diffusion.preview import linked_vae

    vae = linked_vae(unet)
    return None if vae is None else Vae(vae).downscale
