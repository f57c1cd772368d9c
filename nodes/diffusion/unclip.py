"""unCLIP (Stable unCLIP, SD 2.1 unCLIP): a UNet conditioned on a CLIP image embedding.

The UNet has a projection class embedding (``class_embed_type="projection"``) whose
``class_labels`` input is ``cat([noised image embedding, timestep embedding of the noise
level])``, as diffusers' ``StableUnCLIPImg2ImgPipeline.noise_image_embeddings`` builds it:
the embedding is normalised with the checkpoint's ``image_normalizer`` (mean/std),
noised to ``noise_level`` with its ``image_noising_scheduler``, un-normalised, then the
sinusoidal embedding of ``noise_level`` (as wide as the image embedding, ``flip_sin_to_cos``,
no shift) is appended.

ComfyUI's conventions on top of that (``unCLIPConditioning``):

* the noise level is ``round((num_train_timesteps - 1) * noise_augmentation)`` (999 · a);
* several unCLIP conditionings on one prompt (chained nodes, or a batch of images in one
  CLIP_VISION_OUTPUT) add up, each vector times its ``strength``; one with strength 1 is
  exactly the pipeline's (ComfyUI re-noises such a sum once more at
  ``noise_augment_merge``, 0 by default; here the sum is used as it is);
* a prompt without unCLIP conditioning (the negative, usually) gets zeros, as the
  pipeline's unconditional rows do.

The embedding noise comes from ``torch.Generator("cpu").manual_seed(seed)`` of the
sampler's seed, drawn first (positive entries, then negative ones, each conditioning in
order): the pipeline draws it first from its ``generator`` too, so a pipeline given
``generator=torch.Generator().manual_seed(seed)`` and the sampler's initial noise as
``latents`` makes the same image.

How the UNet gets ``class_labels``: :class:`UnclipExtension`, attached to the MODEL by
unCLIPCheckpointLoader (carrying the normaliser and noise schedule, :class:`UnclipParts`),
registers for the run only a forward pre-hook on the UNet that fills ``class_labels``
where a call has none. Each chunk of a pass (its batch roles, as the attention store
knows them: ``uncond``, ``cond``, ``extra:<n>``, SAG's ``sag``) takes the vector of the
conditioning entry whose prompt embeddings it holds, else the one its role names; so
every UNet pass of the run (SAG's, PAG's, a region's) is conditioned, not only the main
one. unCLIPConditioning attaches the same extension without parts, which checks that the
MODEL is an unCLIP one.

Importing this module does not import torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodes.diffusion.extensions import Denoise, SamplerExtension

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.handles import CondEntry
    from nodes.diffusion.sampling import SamplingRun

#: the conditioning option (ComfyUI's key) holding a tuple of :class:`UnclipCondition`
OPTION = "unclip_conditioning"
#: the components a diffusers ``StableUnCLIPImg2ImgPipeline`` folder must have
UNCLIP_COMPONENTS = ("unet", "vae", "text_encoder", "image_encoder", "image_normalizer",
                     "image_noising_scheduler")
#: what to load instead, for error messages
USE_FOLDER = ("use a diffusers StableUnCLIPImg2ImgPipeline folder (e.g. "
              "stabilityai/stable-diffusion-2-1-unclip saved with save_pretrained) in "
              "models/checkpoints")


@dataclass(frozen=True, eq=False)
class UnclipCondition:
    """One unCLIPConditioning: CLIP image embeddings ``[B, D]`` (projected), the factor
    for their class-label vector and the noise augmentation (0..1)."""

    image_embeds: Any
    strength: float = 1.0
    noise_augmentation: float = 0.0


@dataclass(frozen=True, eq=False)
class UnclipParts:
    """What an unCLIP checkpoint adds to a MODEL: the image normaliser's ``mean`` and
    ``std`` (``[1, D]``, float32 on the CPU) and the noising scheduler's config."""

    mean: Any
    std: Any
    noising_config: dict[str, Any]
    name: str = ""

    @property
    def embedding_dim(self) -> int:
        return int(self.mean.shape[-1])

    @property
    def max_noise_level(self) -> int:
        return int(self.noising_config.get("num_train_timesteps", 1000))

    def noise_level(self, noise_augmentation: float) -> int:
        """ComfyUI's level for a 0..1 augmentation: ``round((max - 1) · a)``."""
        top = self.max_noise_level - 1
        return min(max(round(top * float(noise_augmentation)), 0), top)

    def noising_scheduler(self) -> Any:
        """The scheduler whose ``add_noise`` noises the embeddings (DDPM in the released
        checkpoints; the config's own class where diffusers has it)."""
        import diffusers

        cls = getattr(diffusers, str(self.noising_config.get("_class_name", "")), None)
        if cls is None or not hasattr(cls, "add_noise"):
            cls = diffusers.DDPMScheduler
        return cls.from_config(self.noising_config)


def is_unclip_unet(unet: Any) -> bool:
    """Whether ``unet`` takes an image embedding as ``class_labels`` (a projection class
    embedding, as Stable unCLIP's)."""
    config = getattr(unet, "config", None)
    return (getattr(config, "class_embed_type", None) == "projection"
            and getattr(config, "projection_class_embeddings_input_dim", None) is not None
            and getattr(unet, "class_embedding", None) is not None)


def noise_image_embeddings(parts: UnclipParts, image_embeds: torch.Tensor, noise_level: int,
                           generator: torch.Generator | None = None,
                           noise: torch.Tensor | None = None, scheduler: Any = None
                           ) -> torch.Tensor:
    """``[B, 2D]``: diffusers' ``noise_image_embeddings`` (float32 on the CPU): normalise,
    ``add_noise`` at ``noise_level``, un-normalise, append the level's timestep embedding."""
    import torch
    from diffusers.models.embeddings import get_timestep_embedding
    from diffusers.utils.torch_utils import randn_tensor

    embeds = image_embeds.detach().to(device="cpu", dtype=torch.float32)
    if embeds.ndim != 2:
        raise ValueError(f"unCLIP: image embeddings must be [B, D], got {tuple(embeds.shape)}")
    if noise is None:
        noise = randn_tensor(embeds.shape, generator=generator, device=embeds.device,
                             dtype=embeds.dtype)
    levels = torch.tensor([int(noise_level)] * embeds.shape[0], device=embeds.device)
    mean, std = parts.mean.to(embeds), parts.std.to(embeds)
    scaled = (embeds - mean) * 1.0 / std
    scheduler = scheduler if scheduler is not None else parts.noising_scheduler()
    noised = scheduler.add_noise(scaled, timesteps=levels, noise=noise)
    noised = noised * std + mean
    level_embedding = get_timestep_embedding(
        timesteps=levels, embedding_dim=noised.shape[-1], flip_sin_to_cos=True,
        downscale_freq_shift=0).to(noised.dtype)
    return torch.cat((noised, level_embedding), 1)


def unclip_class_labels(parts: UnclipParts, conditions: Sequence[UnclipCondition],
                        generator: torch.Generator | None, width: int) -> torch.Tensor:
    """The ``class_labels`` row ``[1, width]`` of one conditioning entry: the sum over its
    unCLIP conditionings (and the images of each) of ``strength · noised vector``; zeros
    without any. Noise is drawn from ``generator``, one draw per conditioning, in order."""
    import torch

    total = torch.zeros(1, width)
    if not conditions:
        return total
    scheduler = parts.noising_scheduler()
    for cond in conditions:
        embeds = cond.image_embeds
        if embeds.ndim != 2 or embeds.shape[-1] != parts.embedding_dim:
            raise ValueError(
                f"unCLIP: the CLIP vision output's image_embeds are {tuple(embeds.shape)} but "
                f"this unCLIP model expects [B, {parts.embedding_dim}]: encode the image with "
                "the CLIP_VISION that unCLIPCheckpointLoader gives with this model")
        vectors = noise_image_embeddings(parts, embeds, parts.noise_level(cond.noise_augmentation),
                                         generator, scheduler=scheduler)
        total = total + float(cond.strength) * vectors.sum(0, keepdim=True)
    return total


#: SDXL Revision's embedding noise: ComfyUI's SDXL noise augmentor (no normaliser stats)
REVISION_NOISING = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000,
                    "beta_schedule": "squaredcos_cap_v2"}


def revision(run: SamplingRun, entries: Sequence[CondEntry]) -> None:
    """SDXL Revision (ComfyUI's unCLIPConditioning on an SDXL model): each entry with
    unCLIP conditioning takes, as the pooled output the UNet's added embedding reads,
    the sum over its image embeddings of ``strength ·`` the embedding noised to its
    augmentation level (ComfyUI's SDXL noise augmentor: no normaliser stats, a
    squared-cosine schedule); entries without keep their text's pooled output."""
    import torch

    rows = run.added.rows
    generator = _embedding_generator(run.params.seed)
    for k, entry in enumerate(entries):
        conditions = conditions_of(entry)
        if not conditions or k >= len(rows):
            continue
        width = int(rows[k].text_embeds.shape[-1])
        for cond in conditions:
            if cond.image_embeds.ndim != 2 or cond.image_embeds.shape[-1] != width:
                raise ValueError(
                    f"SDXL Revision: the CLIP vision output's image_embeds are "
                    f"{tuple(cond.image_embeds.shape)} but this SDXL model's pooled output "
                    f"is {width} wide: encode the image with CLIP-G's vision model "
                    "(clip_vision_g)")
        parts = UnclipParts(torch.zeros(1, width), torch.ones(1, width), REVISION_NOISING,
                            name="SDXL Revision")
        pooled = unclip_class_labels(parts, conditions, generator, 2 * width)[:, :width]
        rows[k].text_embeds = pooled.to(rows[k].text_embeds)


def conditions_of(entry: CondEntry) -> tuple[UnclipCondition, ...]:
    return tuple(entry.options.get(OPTION, ()))


@dataclass
class _Row:
    embeds: Any  # the entry's prompt embeddings on the run's device/dtype (for matching)
    labels: Any  # [1, width] on the run's device/dtype


@dataclass
class _UnclipState:
    rows: list[_Row]
    by_role: dict[str, int]
    #: hook handles on the UNet, removed in ``teardown``
    handles: list[Any] = field(default_factory=list)


class UnclipExtension(SamplerExtension):
    """Gives every UNet pass of the run its unCLIP ``class_labels`` (see the module
    docstring). With ``parts`` (attached to the MODEL by unCLIPCheckpointLoader) it does
    the work; without (attached by unCLIPConditioning) it checks that the run's MODEL is
    an unCLIP model that carries them. Alone and without parts (on an unCLIP MODEL loaded
    otherwise) it gives every row zeros, as ComfyUI does without unCLIP conditioning."""

    # Changes no prediction; first so its teardown (hook removal) runs before any other's.
    priority = 0

    def __init__(self, parts: UnclipParts | None = None):
        self.parts = parts

    def setup(self, run: SamplingRun) -> None:
        import torch

        unet = run.model.unet
        entries = [*run.positive.entries, *run.negative.entries]
        if not is_unclip_unet(unet) and run.added is not None:
            # SDXL: Revision, the image embedding as the prompt's pooled output; once a run
            if next(ext for ext in run.extensions if isinstance(ext, UnclipExtension)) is self:
                revision(run, entries)
            return
        if not is_unclip_unet(unet):
            raise ValueError(
                "unCLIP Conditioning: this MODEL is not an unCLIP model (its UNet has no "
                "projection class embedding for CLIP image embeddings); load an unCLIP "
                "checkpoint with unCLIPCheckpointLoader, or remove unCLIPConditioning")
        # One of the run's unCLIP extensions does the work: the one with the parts (the
        # MODEL's), else the first (then every row gets zeros).
        ours = [ext for ext in run.extensions if isinstance(ext, UnclipExtension)]
        active = next((ext for ext in ours if ext.parts is not None), ours[0] if ours else self)
        if active is not self:
            return
        parts = self.parts
        width = int(unet.config.projection_class_embeddings_input_dim)
        if parts is None and any(conditions_of(entry) for entry in entries):
            raise ValueError(
                "unCLIP Conditioning: this MODEL has an unCLIP UNet but not its image "
                "normaliser and noise schedule; load the checkpoint with "
                "unCLIPCheckpointLoader (not Load Checkpoint)")
        if parts is not None and width != 2 * parts.embedding_dim:
            raise ValueError(
                f"unCLIP: the UNet's class embedding takes {width} values but the image "
                f"normaliser is {parts.embedding_dim} wide (expected {width // 2}): the "
                "checkpoint's components do not belong together")
        generator = _embedding_generator(run.params.seed)
        device, dtype = run.device, run.dtype
        made: dict[int, Any] = {}
        rows = []
        for entry in entries:
            if id(entry) not in made:  # the same entry twice (negative is positive): once
                conditions = conditions_of(entry)
                labels = (unclip_class_labels(parts, conditions, generator, width)
                          if parts is not None and conditions else torch.zeros(1, width))
                made[id(entry)] = labels.to(device=device, dtype=dtype)
            rows.append(_Row(entry.embeds.to(device=device, dtype=dtype), made[id(entry)]))
        run.state[self] = _UnclipState(
            rows, {"cond": 0, "uncond": len(run.positive.entries),
                   "sag": len(run.positive.entries) if run.do_cfg else 0})

    def denoise(self, run: SamplingRun, denoise: Denoise) -> Denoise:
        # The hook goes on here, not in setup: this phase runs inside the sampler's try, so
        # teardown removes it whatever fails afterwards (as FreeU's hooks).
        state: _UnclipState | None = run.state.get(self)
        if state is not None:
            state.handles.append(run.model.unet.register_forward_pre_hook(
                _ClassLabelsHook(run, state), with_kwargs=True))
        return denoise

    def teardown(self, run: SamplingRun) -> None:
        state: _UnclipState | None = run.state.pop(self, None)
        if state is not None:
            while state.handles:
                state.handles.pop().remove()


def _embedding_generator(seed: int) -> torch.Generator:
    import torch

    return torch.Generator("cpu").manual_seed(int(seed))


def _row_for(state: _UnclipState, embeds: torch.Tensor | None, role: str) -> _Row:
    """The row of the entry the chunk ``embeds`` belongs to (its role's by default)."""
    from nodes.diffusion.entry_rows import match_entry

    preferred = state.by_role.get(role, state.by_role["cond"])
    if embeds is None:
        return state.rows[preferred]
    return state.rows[match_entry([row.embeds for row in state.rows], embeds, preferred)]


@dataclass(eq=False)
class _ClassLabelsHook:
    """UNet forward pre-hook: ``class_labels`` for a call that has none, chunk by chunk of
    the pass's batch roles (``run.attention.roles``)."""

    run: Any
    state: _UnclipState

    def __call__(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                 ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        import torch

        if len(args) > 3 or kwargs.get("class_labels") is not None:
            return None
        sample = args[0] if args else kwargs["sample"]
        embeds = args[2] if len(args) > 2 else kwargs.get("encoder_hidden_states")
        batch = int(sample.shape[0])
        roles = tuple(self.run.attention.roles) or ("cond",)
        if batch % len(roles) or (embeds is not None and embeds.shape[0] != batch):
            roles = ("",) * batch  # an unannounced batch: every row matched by its prompt
            if embeds is not None and embeds.shape[0] != batch:
                embeds = None
        per = batch // len(roles)
        labels = []
        for k, role in enumerate(roles):
            chunk = None if embeds is None else embeds[k * per:(k + 1) * per]
            row = _row_for(self.state, chunk, role).labels  # [1, width], or [1] (x4 upscaler)
            labels.append(row.expand(per, *row.shape[1:]))
        class_labels = torch.cat(labels).to(device=sample.device)
        return args, {**kwargs, "class_labels": class_labels}


# --- loading -------------------------------------------------------------------------------

def check_unclip_folder(path: Path) -> dict[str, Any]:
    """``model_index.json`` of a diffusers StableUnCLIPImg2ImgPipeline folder; ValueError
    (saying what is missing) for anything else."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path.name}: unCLIP single-file checkpoints (.safetensors/.ckpt) "
                         f"are not supported yet; {USE_FOLDER}")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ValueError(f"{path.name} is a folder but not a diffusers model (no "
                         f"model_index.json); {USE_FOLDER}")
    index = json.loads(index_file.read_text(encoding="utf-8"))
    missing = [name for name in UNCLIP_COMPONENTS
               if name not in index or not (path / name).is_dir()]
    if missing:
        raise ValueError(f"{path.name} is not an unCLIP image-variation pipeline "
                         f"({index.get('_class_name', 'unknown')}, without "
                         f"{', '.join(missing)}); {USE_FOLDER}")
    unet_config = path / "unet" / "config.json"
    config = json.loads(unet_config.read_text(encoding="utf-8")) if unet_config.is_file() else {}
    if config.get("class_embed_type") != "projection":
        raise ValueError(f"{path.name} is not an unCLIP model: its UNet has no projection "
                         f"class embedding (class_embed_type "
                         f"{config.get('class_embed_type')!r})")
    return index


def load_unclip_parts(path: Path, *, allow_pickle: bool = False) -> UnclipParts:
    """The image normaliser and noising scheduler config of an unCLIP pipeline folder."""
    import torch
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )

    from nodes.diffusion.loading import _check_folder_weights

    path = Path(path)
    _check_folder_weights(path / "image_normalizer", allow_pickle=allow_pickle)
    normalizer = StableUnCLIPImageNormalizer.from_pretrained(
        path, subfolder="image_normalizer", local_files_only=True,
        use_safetensors=True if not allow_pickle else None)
    config_file = path / "image_noising_scheduler" / "scheduler_config.json"
    if not config_file.is_file():
        raise ValueError(f"{path.name}: image_noising_scheduler/scheduler_config.json is missing")
    noising_config = json.loads(config_file.read_text(encoding="utf-8"))
    mean = normalizer.mean.detach().to(device="cpu", dtype=torch.float32).reshape(1, -1).clone()
    std = normalizer.std.detach().to(device="cpu", dtype=torch.float32).reshape(1, -1).clone()
    return UnclipParts(mean, std, noising_config, path.name)


def image_processor_stats(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(image_mean, image_std)`` of the folder's ``feature_extractor`` (CLIP's
    preprocessing), or None when it has none."""
    file = Path(path) / "feature_extractor" / "preprocessor_config.json"
    if not file.is_file():
        return None
    config = json.loads(file.read_text(encoding="utf-8"))
    mean, std = config.get("image_mean"), config.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
        return None
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
