"""The one sampling loop, written with diffusers' pipeline math.

``sample`` reproduces ``StableDiffusionPipeline`` (text-to-image) and
``StableDiffusionImg2ImgPipeline`` (``denoise`` < 1, diffusers' ``strength``) on
the same weights, seed and scheduler: same noise draw from a CPU generator, same
timesteps, same classifier-free guidance batch ``[uncond, cond]``, same
``scheduler.step`` arguments.
"""

from __future__ import annotations

import inspect
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from nodes.diffusion import attention
from nodes.diffusion.combine import combined_extensions
from nodes.diffusion.concat import check_input_channels
from nodes.diffusion.denoised import denoised_estimate
from nodes.diffusion.extensions import (
    Denoise,
    Predictions,
    SamplerExtension,
    Step,
    UNetCall,
    forward_unet,
    unique_extensions,
)
from nodes.diffusion.handles import CondEntry, Conditioning, DiffusionModel, Latent, Vae
from nodes.diffusion.lora import lora_patched
from nodes.diffusion.masking import latent_extensions
from nodes.diffusion.module_patches import run_scoped
from nodes.diffusion.prompt_weighting import match_token_lengths
from nodes.diffusion.schedulers import _SIGMA_OPTIONS
from nodes.diffusion.sdxl import AddedConditioning, added_conditioning
from nodes.limits import check_fits, out_of_memory_as_value_error

logger = logging.getLogger(__name__)

#: ``callback(step, total, latents)`` after each step; a callback with a ``denoised``
#: keyword also gets ``denoised()``, the step's x̂₀ estimate (None where there is none),
#: computed only when called (live previews); a ``warn(message)`` attribute, when the
#: callback has one, receives the run's warnings (else they are logged)
StepCallback = Callable[..., None]


def progress_counter(scheduler: Any, total: int) -> Callable[[int], tuple[int, int]]:
    """``(done, steps)`` after UNet call ``i`` of ``total``, counted in sampler steps as
    ComfyUI counts them: a k-th order sampler (Heun, DPM 2, DPM++ SDE, SEEDS-3, ...)
    calls the UNet k times per step except the last, so 5 Heun steps are 9 calls but
    "5 steps" to the user."""
    order = int(getattr(scheduler, "order", 1) or 1)
    if order < 2 or total < order:
        return lambda i: (i + 1, total)
    steps = (total + order - 1) // order
    return lambda i: (steps if i == total - 1 else (i + 1) // order, steps)


def _takes_denoised(callback: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return any(p.name == "denoised" or p.kind is p.VAR_KEYWORD for p in params)


@dataclass(frozen=True)
class SamplingParams:
    seed: int
    steps: int
    cfg: float
    denoise: float = 1.0
    eta: float = 0.0
    # KSamplerAdvanced: run steps [start_step, end_step) of the ``steps`` schedule; with
    # add_noise False the latent is already noisy at the first of them (VP space).
    start_step: int = 0
    end_step: int | None = None
    add_noise: bool = True
    # SDTurboScheduler: explicit timesteps (``steps`` is their count) instead of the
    # scheduler's spacing; ``denoise`` < 1 then only says they start below the top, so
    # the input latent is noised to the first of them (the window still applies).
    timesteps: tuple[int, ...] | None = None
    # KarrasScheduler, AlignYourStepsScheduler, ...: the scheduler runs an explicit σ list
    # (``steps`` long, nothing cut); ``denoise`` < 1 likewise says it starts below the top
    explicit_sigmas: bool = False


def _teardown(exts: list[SamplerExtension], run: SamplingRun) -> None:
    """Tear every extension down, even when one's teardown fails; that failure is raised
    after the rest ran, unless another exception is already on its way out."""
    failure: Exception | None = None
    for ext in exts:
        try:
            ext.teardown(run)
        except Exception as exc:  # the others must still release their state
            logger.exception("teardown of %s failed", type(ext).__name__)
            failure = failure or exc
    if failure is not None and sys.exc_info()[1] is None:
        raise failure


def denoise_start(steps: int, denoise: float) -> int:
    """The first step of a ``steps`` schedule that ``denoise`` < 1 keeps (diffusers'
    ``strength``: the last ``int(steps · denoise)`` steps); 0 for a whole run."""
    return steps - min(int(steps * denoise), steps) if denoise < 1.0 else 0


def schedule_window(scheduler: Any, params: SamplingParams, t_start: int) -> tuple[int, int]:
    """The timesteps of the schedule before and after a run that starts at step ``t_start``
    (``prepare_timesteps``' second result). ``denoise`` < 1 cuts the schedule first, as
    diffusers' ``strength`` does (its img2img pipelines measure a ControlNet's window on
    the steps left): only a window of what is left counts (KSamplerAdvanced, SplitSigmas)."""
    order = int(getattr(scheduler, "order", 1))
    cut = params.timesteps is None and not params.explicit_sigmas
    first = denoise_start(params.steps, params.denoise) if cut else 0
    end = params.end_step
    after = params.steps - end if end is not None and end < params.steps else 0
    return max(t_start - first, 0) * order, max(after, 0) * order


def prepare_timesteps(
    scheduler: Any, steps: int, denoise: float, device: torch.device,
    start_step: int = 0, end_step: int | None = None,
    custom_timesteps: tuple[int, ...] | None = None, explicit_sigmas: bool = False,
) -> tuple[torch.Tensor, int]:
    """Set the schedule and keep its last ``denoise`` fraction (img2img's strength),
    or the window ``[start_step, end_step)`` of it. ``custom_timesteps`` replaces the
    scheduler's spacing (``denoise`` is then already in them and cuts nothing), as does
    an explicit σ list the scheduler was given (``explicit_sigmas``).

    Returns the timesteps to run and the index of the first one.
    """
    if custom_timesteps is not None:
        from nodes.diffusion.sigma_schedules import set_custom_timesteps

        set_custom_timesteps(scheduler, custom_timesteps, device)
        denoise = 1.0
    else:
        _check_distinct_levels(scheduler, steps, scheduled=False)  # some refuse themselves
        scheduler.set_timesteps(steps, device=device)
        _check_distinct_levels(scheduler, steps)
    if explicit_sigmas:
        denoise = 1.0
        if hasattr(scheduler, "set_begin_index"):
            # σs outside the model's range map to one timestep: diffusers would then find
            # the step by timestep wrongly, so the window says where it starts
            scheduler.set_begin_index(max(start_step, 0) * scheduler.order)
    if denoise >= 1.0 and start_step <= 0 and end_step is None:
        if hasattr(scheduler, "set_begin_index"):
            # diffusers finds its first step by timestep, and where the schedule repeats
            # its first one (beta at 32+ steps: 998, 998, ...) it takes the second: the
            # run then ends one σ past the table (IndexError at the last step)
            scheduler.set_begin_index(0)
        return scheduler.timesteps, 0
    t_start = max(start_step, denoise_start(steps, denoise))
    end = None if end_step is None else end_step * scheduler.order
    timesteps = scheduler.timesteps[t_start * scheduler.order : end]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps, t_start


def _check_distinct_levels(scheduler: Any, steps: int, scheduled: bool = True) -> None:
    """More steps than the model has noise levels repeat timesteps, and several solvers
    then fail at some late step (a zero step size, an index past the table), or refuse
    in diffusers' words (DDIM, before ``scheduled``): refuse at once, saying what runs
    instead."""
    levels = int(getattr(scheduler.config, "num_train_timesteps", 0) or 0)
    if not levels or steps < levels or getattr(scheduler, "runs_sigma_list", False) or any(
            getattr(scheduler.config, key, False) for key in _SIGMA_OPTIONS):
        return  # σ spacings: timesteps may round alike, the solvers step by σ
    if scheduled:
        timesteps = scheduler.timesteps
        repeats = len(timesteps) > 1 and bool((timesteps[1:] == timesteps[:-1]).any())
        # "leading" + steps_offset: t = 1000
        refuse = repeats or bool((timesteps >= levels).any())
    else:
        refuse = steps > levels
    if refuse:
        raise ValueError(f"{steps} steps: this model has {levels} noise levels, and this "
                         "schedule then repeats timesteps or runs past the last: use fewer "
                         f"than {levels} steps, or the karras, exponential or kl_optimal "
                         "schedule, whose noise levels are not tied to the model's timesteps")


def initial_latents(
    scheduler: Any,
    latent: Latent,
    timesteps: torch.Tensor,
    denoise: float,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
    start_step: int = 0,
    add_noise: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise the input latent for the first timestep; returns (latents, noise).

    At full denoise the start is pure noise scaled by ``init_noise_sigma``, as in
    diffusers' text-to-image and inpainting pipelines; below it the latent is noised
    to the first timestep with ``scheduler.add_noise``, as in image-to-image.
    (diffusers' img2img at strength exactly 1.0 keeps a sqrt(alpha_bar_T) trace of
    the image; we start from pure noise there too.)
    Without ``add_noise`` the latent is already noisy at the first timestep, in the
    variance-preserving space the UNet sees; it is moved into the scheduler's own.
    """
    samples = latent.samples.to(device=device, dtype=dtype)
    noise = batch_noise(tuple(samples.shape), latent.batch_index, generator, device, dtype)
    if not add_noise:
        scale = model_input_scale(scheduler, timesteps[0]) if len(timesteps) else 1.0
        return samples / scale, noise
    if denoise >= 1.0 and start_step <= 0:
        return noise * scheduler.init_noise_sigma, noise
    if len(timesteps) == 0:
        return samples, noise
    latent_timestep = timesteps[:1].repeat(samples.shape[0])
    return scheduler.add_noise(samples, noise, latent_timestep), noise


def batch_noise(shape: tuple[int, ...], batch_index: tuple[int, ...] | None,
                generator: torch.Generator, device: torch.device, dtype: torch.dtype
                ) -> torch.Tensor:
    """The initial noise: one draw for the batch (diffusers' pipelines' noise); with a
    LATENT's ``batch_index`` (Latent From Batch, Repeat Latent Batch: ComfyUI's), row k
    is what row ``batch_index[k]`` of the whole batch's draw was, so an image taken out
    of a batch samples to the same picture (exactly so when 4·h·w is a multiple of 16,
    torch's CPU generator's block size: any latent with an even side)."""
    if batch_index is None or len(batch_index) != shape[0] or min(batch_index) < 0:
        # (an index a batch-changing node did not carry along: the batch's own draw)
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    whole = randn_tensor((max(batch_index) + 1, *shape[1:]), generator=generator,
                         device=device, dtype=dtype)
    return whole[list(batch_index)]


def model_input_scale(scheduler: Any, timestep: torch.Tensor) -> torch.Tensor:
    """The factor ``scale_model_input`` applies at ``timestep``: 1 for variance-preserving
    schedulers (DDIM, DPM-Solver, ...), 1/sqrt(σ²+1) for σ-space ones (Euler, Heun, ...)."""
    return scheduler.scale_model_input(torch.ones(()), timestep)


def guidance_embeds(
    positive: Conditioning,
    negative: Conditioning,
    batch: int,
    do_cfg: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``[neg * B, pos * B]`` as the pipelines batch them (or ``[pos * B]`` without CFG)."""
    pos = positive.embeds.to(device=device, dtype=dtype)
    pos = pos.repeat(batch // pos.shape[0], 1, 1) if pos.shape[0] != batch else pos
    if not do_cfg:
        return pos
    neg = negative.embeds.to(device=device, dtype=dtype)
    neg = neg.repeat(batch // neg.shape[0], 1, 1) if neg.shape[0] != batch else neg
    return torch.cat(match_token_lengths([neg, pos]))  # long prompts: several 77-token windows


def step_kwargs(scheduler: Any, generator: torch.Generator, eta: float) -> dict[str, Any]:
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


@dataclass
class SamplingRun:
    """Everything one sampling run knows; extensions read it and keep state in ``state``."""

    model: DiffusionModel
    scheduler: Any
    params: SamplingParams
    generator: torch.Generator
    timesteps: torch.Tensor
    init_latents: torch.Tensor
    noise: torch.Tensor
    positive: Conditioning
    negative: Conditioning
    latent: Latent
    do_cfg: bool
    extensions: list[SamplerExtension]
    state: dict[Any, Any] = field(default_factory=dict)
    #: the attention store: batch roles of the current UNet pass, token sizes
    attention: attention.AttentionStore = field(default_factory=attention.AttentionStore)
    #: the main pass's batch roles: "uncond", "cond", then "extra:<n>" per extra entry
    roles: tuple[str, ...] = ("cond",)
    #: chunk index range ``[first, end)`` of each extension's extra entries, by ``id``
    extra_chunks: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: SDXL's pooled embeddings and size conditioning per entry (None for SD 1.x/2.x)
    added: AddedConditioning | None = None
    #: ``[1, time_cond_proj_dim]`` for a guidance-distilled UNet (see guidance_embedding)
    timestep_cond: torch.Tensor | None = None
    #: the conditioning entry each batch role stands for ("cond", "uncond", "extra:<n>",
    #: and the roles of an extension's own pass that declares them): hooks read it
    entries: dict[str, CondEntry] = field(default_factory=dict)
    #: tells the user something the run did on their behalf (a mask stretched, ...)
    warn: Callable[[str], None] = logger.warning
    #: a window of a longer schedule (KSamplerAdvanced's start / end_at_step, SplitSigmas):
    #: the schedule's timesteps before and after this run's (see :func:`schedule_window`)
    schedule_before: int = 0
    schedule_after: int = 0

    @property
    def schedule_length(self) -> int:
        """The steps the techniques' windows are fractions of (a ControlNet's start / end
        percent, SEGA's warm-up, FABRIC's feedback window, ...): the whole schedule this
        run is a window of, so that two samplers splitting a run act as the one run does
        (ComfyUI measures them on the whole schedule too)."""
        return self.schedule_before + len(self.timesteps) + self.schedule_after

    def schedule_index(self, step: Step) -> int:
        """``step``'s index in that schedule."""
        return self.schedule_before + step.index

    def added_cond_kwargs(self, embeds: torch.Tensor, roles: tuple[str, ...] | list[str]
                          ) -> dict[str, torch.Tensor] | None:
        """The UNet's ``added_cond_kwargs`` for a pass over ``roles`` (equal chunks of
        ``embeds``), or None for models that take none."""
        return None if self.added is None else self.added.kwargs(embeds, roles)

    def roles_of(self, extension: SamplerExtension) -> tuple[str, ...]:
        """The batch roles (``extra:<n>``) of the entries ``extension`` added."""
        first, end = self.extra_chunks.get(id(extension), (0, 0))
        return self.roles[first:end]

    def extension_pass(self, owner: SamplerExtension, step: Step, sample: torch.Tensor,
                       embeds: torch.Tensor, roles: tuple[str, ...] | list[str]) -> torch.Tensor:
        """An extension's own UNet pass (SAG's degraded latent, Pix2Pix-Zero's reference):
        the other extensions fill its inputs as for the main pass (a ControlNet's
        residuals, an inpainting UNet's channels), and its batch is declared to the
        attention store as ``roles``."""
        call = UNetCall(sample, sample, step.timestep, embeds,
                        added_cond_kwargs=self.added_cond_kwargs(embeds, roles),
                        timestep_cond=self.timestep_cond)
        with self.attention.roles_for(roles):
            for ext in self.extensions:
                if ext is not owner:
                    ext.unet_inputs(self, step, call)
            return call.forward(self.model.unet)

    @property
    def device(self) -> torch.device:
        return self.init_latents.device

    @property
    def dtype(self) -> torch.dtype:
        return self.init_latents.dtype


def _guided_prediction(run: SamplingRun, step: Step, chunks: tuple[torch.Tensor, ...],
                       exts: list[SamplerExtension],
                       extra_slices: dict[int, tuple[int, int]]) -> torch.Tensor:
    """The step's prediction from the batch's chunks: ``uncond + guidance``, guidance
    starting at ``cfg · (cond − uncond)``. Without CFG the batch is ``[cond, extra...]``:
    the unconditional prediction is the conditional one, the guidance term starts at
    zero and the prediction is ``cond + guidance``."""
    cond = chunks[1] if run.do_cfg else chunks[0]
    preds = Predictions(chunks[0], cond, {
        key: chunks[a:b] for key, (a, b) in extra_slices.items()})
    for ext in exts:
        ext.predictions(run, step, preds)
    guidance = (run.params.cfg * (preds.cond - preds.uncond) if run.do_cfg
                else torch.zeros_like(preds.cond))
    for ext in exts:
        guidance = ext.guidance(run, step, preds, guidance)
    if run.do_cfg and getattr(run.scheduler, "cfg_pp", False):
        step.scheduler_kwargs["uncond_output"] = preds.uncond
    return (preds.uncond if run.do_cfg else preds.cond) + guidance


def _tile_rows(embeds: torch.Tensor, chunks: int, copies: int) -> torch.Tensor:
    """Embeddings for ``copies`` latents per image (windows stacked on the batch axis):
    each chunk's rows repeated ``copies`` times, chunk by chunk."""
    if copies == 1:
        return embeds
    return embeds.reshape(chunks, -1, *embeds.shape[1:]).repeat(
        1, copies, *[1] * (embeds.dim() - 1)).reshape(-1, *embeds.shape[1:])


def collect_extensions(model: DiffusionModel, positive: Conditioning, negative: Conditioning,
                       latent: Latent) -> list[SamplerExtension]:
    """Extensions attached to the model, to either conditioning, and implied by the latent."""
    from_cond = [ext for cond in (positive, negative) for entry in cond.entries
                 for ext in entry.options.get("extensions", ())]
    extensions = unique_extensions(combined_extensions(positive, negative), model.extensions,
                                   from_cond, latent_extensions(model, latent),
                                   hooked_extensions(positive, negative))
    check_input_channels(model.unet, latent.samples.shape[1], extensions)
    check_context_width(model.unet, positive, negative)
    return extensions


def check_context_width(unet: Any, positive: Conditioning, negative: Conditioning) -> None:
    """Prompt embeddings as wide as the UNet's cross-attention takes them: a text encoder
    of another model family is named as such, not met as a matrix shape error."""
    config = unet.config
    if getattr(config, "encoder_hid_dim", None) is not None:
        return  # a projection in front of the cross-attention decides
    width = getattr(config, "cross_attention_dim", None)
    widths = set(width) if isinstance(width, list | tuple) else {width}
    if len(widths) != 1 or not isinstance(next(iter(widths)), int):
        return
    (expected,) = widths
    for side, cond in (("positive", positive), ("negative", negative)):
        for entry in cond.entries:
            got = int(entry.embeds.shape[-1])
            if got != expected:
                sdxl = getattr(config, "addition_embed_type", None) == "text_time"
                raise ValueError(
                    f"the {side} prompt's embeddings are {got} wide but this model's UNet "
                    f"takes {expected}: the text encoder (CLIP) belongs to another model; "
                    "encode the prompt with the CLIP of the checkpoint this UNet came from"
                    + (" (an SDXL refiner and its base model each need their own CLIP Text "
                       "Encode nodes)" if sdxl else ""))


def hooked_extensions(positive: Conditioning, negative: Conditioning
                      ) -> list[SamplerExtension]:
    """The hooks the conditionings carry, applied to their own rows (none: no extension)."""
    from nodes.diffusion.hooks import HookedWeights, hook_groups

    groups = hook_groups((*positive.entries, *negative.entries))
    return [HookedWeights([h for g in groups for h in g.hooks])] if groups else []


RESIZE_FIX = "lower batch_size, width or height"


def unet_activation_bytes(unet: Any, rows: int, height: int, width: int) -> int:
    """A lower bound of the UNet's peak activations for a pass over ``rows`` latents of
    ``height`` x ``width``: at its first level the down path keeps ``layers_per_block`` + 1
    feature maps of ``block_out_channels[0]`` channels for the up path's skips, and a ResNet
    block works on two more (its input and its convolution's output). Attention, the deeper
    levels and the up path come on top, so a pass this refuses cannot fit; one it lets
    through may still run out (see ``sample``'s translation of that)."""
    config = getattr(unet, "config", None)
    channels = (getattr(config, "block_out_channels", None) or (0,))[0]
    layers = getattr(config, "layers_per_block", 2)
    layers = min(layers) if isinstance(layers, (tuple, list)) else int(layers)
    itemsize = getattr(unet.dtype, "itemsize", 4)
    return (layers + 3) * channels * rows * height * width * itemsize


def check_unet_fits(unet: Any, latents: torch.Tensor, chunks: int) -> None:
    """Refuse a UNet pass over ``latents`` repeated ``chunks`` times (guidance's batch)
    whose activations cannot fit in the memory free on the UNet's device."""
    batch, _, height, width = latents.shape
    rows = batch * chunks
    guidance = f" ({rows} UNet rows with guidance)" if chunks > 1 else ""
    check_fits(unet_activation_bytes(unet, rows, height, width), latents.device,
               f"sampling {batch} latents of {width}x{height} latent pixels{guidance}",
               RESIZE_FIX)


def check_latent_size(unet: Any, size: tuple[int, int]) -> None:
    """Refuse a latent the UNet shrinks to one pixel at a level whose group norm has one
    channel per group (small models; SD's have ten): torch would stop there with
    "Expected more than 1 value per channel"."""
    config = unet.config
    channels = list(getattr(config, "block_out_channels", ()) or ())
    groups = int(getattr(config, "norm_num_groups", 0) or 0)
    if not groups:
        return
    # each down block but the last halves the size (rounding up); a level's first ResNet
    # normalises what the level above handed down
    scales = [2 ** level for level, width in enumerate(channels)
              if min(width, channels[max(level - 1, 0)]) // groups <= 1]
    if scales and max(size) <= max(scales):
        raise ValueError(
            f"the latent is {size[1]}x{size[0]}: this model's UNet shrinks it to one "
            "pixel at a level it cannot normalise; make the image larger (a latent "
            f"of at least {max(scales) + 1} pixels on one side)")


#: how many times the model's native size a latent side may be before the sampler warns
#: (2: a hires fix's second pass, which works)
NATIVE_SIZE_FACTOR = 2


def native_size_warning(model: DiffusionModel, latent: Latent, params: SamplingParams,
                        extensions: list[SamplerExtension],
                        positive: Conditioning | None = None) -> str | None:
    """A warning when an empty latent is sampled from pure noise at far more than the size
    the model was trained at (its UNet's ``sample_size``): the UNet draws a subject per
    patch of about that size, so it repeats or breaks them (ComfyUI says nothing).

    None where the model states no size, or something else sets the composition: an
    image (img2img, inpainting, an image-conditioned UNet), windows of the native size
    (MultiDiffusion, Deep Shrink), a control image (ControlNet, T2I-Adapter, GLIGEN's
    boxes) or region prompts (areas, masks: ComfyUI's area composition)."""
    config = model.unet.config
    native = getattr(config, "sample_size", None)
    if isinstance(native, int) and native > 0:
        native = (native, native)
    if not (isinstance(native, tuple | list) and len(native) == 2
            and all(isinstance(n, int) and n > 0 for n in native)):
        return None
    height, width = (int(s) for s in latent.samples.shape[-2:])
    ratio = max(height / native[0], width / native[1])
    if ratio <= NATIVE_SIZE_FACTOR:
        return None
    if (params.denoise < 1.0 or params.start_step > 0 or not params.add_noise
            or latent.noise_mask is not None or latent.inpaint is not None
            or getattr(config, "in_channels", None) != latent.samples.shape[1]):
        return None
    if any(ext.handles_large_latents for ext in extensions) or bool(latent.samples.any()):
        return None
    if positive is not None and any("area" in e.options or e.options.get("mask") is not None
                                    for e in positive.entries):
        return None
    from nodes.latent import downscale_of

    scale = downscale_of(latent, None, model.unet)
    sides = "per side" if height / native[0] == width / native[1] else "on one side"
    return (f"this model was trained at {native[1] * scale}x{native[0] * scale}; "
            f"{width * scale}x{height * scale} is {round(ratio, 2):g}x that {sides}: expect "
            "repeated, broken or missing subjects (Empty Latent Image's size sets it)")


def guidance_embedding(cfg: float, dim: int, device: Any, dtype: Any) -> torch.Tensor:
    """``[1, dim]``: the guidance scale w = cfg − 1 as a guidance-distilled UNet takes it
    (LCM, Luo et al. 2023; diffusers' ``get_guidance_scale_embedding``): sinusoids of
    1000·w at frequencies 10000^(−k/(dim/2 − 1)), sines then cosines."""
    w = torch.tensor([(float(cfg) - 1.0) * 1000.0])
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32)
                            * -(math.log(10000.0) / (half - 1)))
    angles = w[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding.to(device=device, dtype=dtype)


def fit_empty_latent(model: DiffusionModel, latent: Latent) -> Latent:
    """Latents fitted to ``model``: those a VAE without a stated scaling encoded,
    rescaled to the model's; an Empty Latent Image made without its ``vae`` (sized for
    SD's 8x VAE, as in every ComfyUI graph) remade for the VAE the model was loaded with,
    when that one scales otherwise (the built-in model's is 4x): it holds only zeros, so
    nothing is lost, and the picture comes out at the size the graph asked for. A latent
    something was written into (a mask, an inpainting input, non-zero samples) is left
    as it is."""
    from nodes.diffusion.preview import linked_vae

    if latent.scale_assumed and latent.scaling_factor:
        # encoded by a VAE whose file stated no scaling (SD 1.x's was assumed; an SDXL VAE
        # file has the same layers): the model's scaling is the latents', as in ComfyUI
        ratio = model.latent_scale / latent.scaling_factor
        inpaint = latent.inpaint
        if inpaint is not None and ratio != 1:  # the same VAE encoded the masked image
            inpaint = replace(inpaint, masked_latents=inpaint.masked_latents * ratio)
        latent = replace(latent, samples=latent.samples * ratio if ratio != 1 else
                         latent.samples, scaling_factor=model.latent_scale,
                         scale_assumed=False, inpaint=inpaint)
    assumed = latent.assumed_downscale
    loaded = linked_vae(model.unet) if assumed else None
    if loaded is None or latent.noise_mask is not None or latent.inpaint is not None:
        return latent
    vae = Vae(loaded)
    batch, channels, height, width = latent.samples.shape
    if (vae.downscale, vae.latent_channels) == (assumed, channels):
        return latent
    pixels = (height * assumed, width * assumed)
    if pixels[0] % vae.downscale or pixels[1] % vae.downscale or bool(latent.samples.any()):
        return latent
    samples = latent.samples.new_zeros(batch, vae.latent_channels,
                                       pixels[0] // vae.downscale, pixels[1] // vae.downscale)
    return replace(latent, samples=samples, assumed_downscale=None, downscale=vae.downscale,
                   scaling_factor=latent.scaling_factor or vae.scaling_factor)


@torch.no_grad()
@lora_patched  # the MODEL's LoRA patches are on the UNet's weights for the run only
@run_scoped  # modules extensions attach to the UNet (GLIGEN's layers) for the run only
def sample(model: DiffusionModel, scheduler: Any, positive: Conditioning,
           negative: Conditioning, latent: Latent, params: SamplingParams,
           callback: StepCallback | None = None,
           results: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Denoise ``latent`` with every attached extension; returns latents (UNet space).
    ``results``, when given, receives what the extensions report about the run (their
    ``results`` phase)."""
    unet = model.unet
    latent = fit_empty_latent(model, latent)
    check_latent_size(unet, tuple(latent.samples.shape[-2:]))
    from nodes.diffusion.continuous_samplers import from_model_latents, model_space_latent

    given, latent = latent, model_space_latent(model, latent)  # Playground v2.5's format
    device, dtype = unet.device, unet.dtype
    # The noise comes from a CPU generator so a seed gives the same image on any device.
    generator = torch.Generator("cpu").manual_seed(params.seed)
    timesteps, t_start = prepare_timesteps(scheduler, params.steps, params.denoise, device,
                                           params.start_step, params.end_step,
                                           params.timesteps, params.explicit_sigmas)
    init_latents = latent.samples.to(device=device, dtype=dtype)
    latents, noise = initial_latents(scheduler, latent, timesteps, params.denoise, generator,
                                     device, dtype, params.start_step, params.add_noise)
    # CFG++ samplers renoise with the unconditional prediction: they need it at any cfg
    # (unless it is the conditional one: BasicGuider's, where CFG++ is the plain sampler)
    cfg_pp = getattr(scheduler, "cfg_pp", False) and negative is not positive
    do_cfg = (params.cfg > 1.0 or cfg_pp) and unet.config.time_cond_proj_dim is None
    run = SamplingRun(model, scheduler, params, generator, timesteps, init_latents, noise,
                      positive, negative, latent, do_cfg,
                      collect_extensions(model, positive, negative, latent))
    run.schedule_before, run.schedule_after = schedule_window(scheduler, params, t_start)
    from nodes.latent import downscale_of

    run.added = added_conditioning(model, positive, negative, tuple(init_latents.shape[-2:]),
                                   device, dtype, downscale_of(latent, None, unet))
    if unet.config.time_cond_proj_dim is not None:  # no CFG pass: cfg is an input here
        run.timestep_cond = guidance_embedding(params.cfg, unet.config.time_cond_proj_dim,
                                               device, dtype)
    run.entries.update({"cond": positive.entries[0], "uncond": negative.entries[0]})
    run.warn = getattr(callback, "warn", None) or logger.warning
    exts = run.extensions
    oversized = native_size_warning(model, latent, params, exts, positive)
    if oversized:  # once per run, before the first step
        run.warn(oversized)
    batch = latents.shape[0]
    embeds = guidance_embeds(positive, negative, batch, do_cfg, device, dtype)
    extra_slices = run.extra_chunks
    # Without CFG only extensions that declare ``without_cfg`` add entries: [cond, extra...].
    guided = exts if do_cfg else [ext for ext in exts if ext.without_cfg]
    base = 2 if do_cfg else 1
    extra: list[torch.Tensor] = []
    set_up: list[SamplerExtension] = []
    try:  # an extension whose setup (or a later one's) fails is torn down all the same
        for ext in exts:
            set_up.append(ext)
            ext.setup(run)
            if any(ext is g for g in guided):
                # a CondEntry brings its own options: SDXL's pooled output for its row
                raw = [c if isinstance(c, CondEntry) else CondEntry(c)
                       for c in ext.extra_conditions(run)]
                conds = [c.embeds.to(device=device, dtype=dtype) for c in raw]
                start = base + len(extra)
                # the entries these rows stand for (hooks read them): an extension that
                # adds entries of the conditionings names them, else the rows themselves
                named = getattr(ext, "extra_entries", None)
                run.entries.update({f"extra:{start - base + k}": c for k, c in enumerate(
                    named(run) if named is not None else raw)})
                if run.added is not None:
                    for k, c in enumerate(raw):
                        run.added.bind(f"extra:{start - base + k}", c.embeds,
                                       c.options.get("pooled_output"))
                extra_slices[id(ext)] = (start, start + len(conds))
                extra.extend(c.repeat(batch // c.shape[0], 1, 1) for c in conds)
        if extra:
            embeds = torch.cat(match_token_lengths([embeds, *extra]))
        n_chunks = base + len(extra)
        run.roles = (*(("uncond", "cond") if do_cfg else ("cond",)),
                     *(f"extra:{n}" for n in range(len(extra))))
        run.attention.roles = run.roles
        levels = len(getattr(unet.config, "block_out_channels", ())) or 4  # stubs in tests
        run.attention.learn_sizes(*latents.shape[-2:], levels=levels)
        hooks = [hook for ext in exts for hook in ext.attention_hooks(run)]
        saved = attention.install(unet, hooks, run, run.attention)
    except BaseException:
        _teardown(set_up, run)
        raise
    step_extra = step_kwargs(scheduler, generator, params.eta)
    total = len(timesteps)
    progress = progress_counter(scheduler, total)
    takes_denoised = callback is not None and _takes_denoised(callback)

    def denoise_step(run: SamplingRun, step: Step, latents: torch.Tensor) -> torch.Tensor:
        t = step.timestep
        if step.index == 0:  # before the first UNet pass allocates anything
            check_unet_fits(unet, latents, n_chunks)
        model_input = torch.cat([latents] * n_chunks) if n_chunks > 1 else latents
        model_input = run.scheduler.scale_model_input(model_input, t)
        step.model_input = model_input[: latents.shape[0]]
        rows = _tile_rows(embeds, n_chunks, latents.shape[0] // batch)
        call = UNetCall(model_input, model_input, t, rows,
                        added_cond_kwargs=run.added_cond_kwargs(rows, run.roles),
                        timestep_cond=run.timestep_cond)
        for ext in exts:
            ext.unet_inputs(run, step, call)
        noise_pred = forward_unet(exts, run, step, call, unet)  # EasyCache, Torch Compile
        if do_cfg or guided:  # guided: with CFG every extension, else without_cfg ones
            noise_pred = _guided_prediction(run, step, noise_pred.chunk(n_chunks), guided,
                                            extra_slices)
        step.prediction = noise_pred
        return run.scheduler.step(noise_pred, t, latents,
                                  **{**step_extra, **step.scheduler_kwargs},
                                  return_dict=False)[0]

    height, width = latents.shape[-2:]
    out_of_memory = out_of_memory_as_value_error(
        device, f"sampling {batch} latents of {width}x{height} latent pixels", RESIZE_FIX)
    try:
        denoise: Denoise = denoise_step
        for ext in exts:  # MultiDiffusion: the same step on windows, averaged
            denoise = ext.denoise(run, denoise)
        with out_of_memory:
            for i, t in enumerate(timesteps):
                step = Step(i, total, t)
                for ext in exts:
                    latents = ext.pre_step(run, step, latents)
                before = latents
                latents = denoise(run, step, latents)
                for ext in exts:
                    latents = ext.post_step(run, step, latents)
                if callback is not None and takes_denoised:
                    callback(*progress(i), latents, denoised=partial(
                        denoised_estimate, run.scheduler, t, before, step.prediction))
                elif callback is not None:
                    callback(*progress(i), latents)
        if results is not None:
            for ext in exts:
                results.update(ext.results(run))
    finally:
        if saved is not None:
            unet.set_attn_processor(saved)
        _teardown(exts, run)
    rest = scheduler.timesteps[t_start * scheduler.order + total:]
    if params.end_step is not None and total and len(rest):
        # stopped early: hand the leftover noise on in the VP space the UNet sees
        latents = latents * model_input_scale(scheduler, rest[0])
    elif params.explicit_sigmas and total:
        # an explicit σ list may end above 0 (Manual Sigmas, a flipped schedule): the
        # leftover noise goes on in the VP space too
        final = float(getattr(scheduler, "sigmas", torch.zeros(1))[-1])
        if final > 0:
            latents = latents / (final**2 + 1) ** 0.5
    return from_model_latents(model, given, latents)
