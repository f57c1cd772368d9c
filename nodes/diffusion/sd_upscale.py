"""The Stable Diffusion x4 latent upscaler (``stabilityai/stable-diffusion-x4-upscaler``),
with the math of diffusers' ``StableDiffusionUpscalePipeline`` and ComfyUI's
``SD_4XUpscale_Conditioning`` conventions.

The model is an SD 2 text-to-image model (OpenCLIP ViT-H text encoder, v-prediction)
whose UNet takes 7 input channels — the latents and the low-resolution image's *pixels*
in -1..1 at the latent size (no VAE encoding) — and a noise level as ``class_labels``
(``num_class_embeds`` = 1000). Its VAE has 3 levels (4x downscale) and a scaling factor
of 0.08333, so a latent of the low-res image's size decodes to 4x that size.

* The pixels ride on the UNet's extra channels through the shared
  :class:`nodes.diffusion.concat.ConcatChannels` (:class:`X4Upscale`).
* The noise level reaches every UNet pass as ``class_labels`` through unCLIP's per-run
  UNet pre-hook (:class:`nodes.diffusion.unclip._ClassLabelsHook`): one row per
  conditioning entry, matched to each chunk of a pass by its batch role / prompt.
* Noise augmentation (ComfyUI's ``noise_augmentation`` 0..1) is the noise level
  ``round(max_noise_level · a)`` (``max_noise_level`` 350, the pipeline's); for a level
  above 0 the low-res image is noised with the checkpoint's ``low_res_scheduler``
  (``DDPMScheduler.add_noise``), the noise drawn first from
  ``torch.Generator("cpu").manual_seed(seed)`` as the pipeline draws it from its
  generator. At 0 the image is used as it is (ComfyUI); the pipeline instead noises it
  at DDPM timestep 0 (β₀ = 1e-4: 1 % noise) — the one difference at level 0.

A conditioning that does not carry the extension (a plain negative) sees a zero image
and noise level 0, as in ComfyUI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nodes.diffusion.concat import ConcatChannels, unet_kind
from nodes.diffusion.extensions import Denoise, SamplerExtension

if TYPE_CHECKING:
    from nodes.diffusion.handles import Conditioning
    from nodes.diffusion.sampling import SamplingRun

#: in_channels of the x4 upscaler's UNet: 4 latents + 3 low-res image channels
X4_UNET_CHANNELS = 7
#: the pipeline's default (and ComfyUI's fixed) largest noise level
DEFAULT_MAX_NOISE_LEVEL = 350
#: the x4 upscaler's ``low_res_scheduler`` (ComfyUI's fixed noise augmentor schedule)
DEFAULT_LOW_RES_SCHEDULER: dict[str, Any] = {
    "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
    "beta_end": 0.02, "beta_schedule": "scaled_linear", "clip_sample": False,
    "variance_type": "fixed_small"}
#: the shipped diffusers configs of the released model (for single files)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "assets" / "configs" / "sd_x4_upscaler"
_UNET = "model.diffusion_model."
_VAE_DOWN = "first_stage_model.encoder.down."


# --- detection and loading ---------------------------------------------------------------

def is_x4_unet(unet: Any) -> bool:
    """Whether ``unet`` is an x4 upscaler's: 7 input channels and a class-label table
    (the noise level)."""
    config = getattr(unet, "config", None)
    return (int(getattr(config, "in_channels", 0) or 0) == X4_UNET_CHANNELS
            and getattr(config, "num_class_embeds", None) is not None)


def is_x4_layout(shapes: Mapping[str, Sequence[int]]) -> bool:
    """Whether an original-layout checkpoint (key → shape) is the x4 upscaler: UNet
    ``conv_in`` with 7 input channels, a class embedding of 1000 entries and a VAE with
    3 levels."""
    conv_in = shapes.get(_UNET + "input_blocks.0.0.weight")
    label = shapes.get(_UNET + "label_emb.weight")
    if conv_in is None or len(conv_in) != 4 or int(conv_in[1]) != X4_UNET_CHANNELS:
        return False
    if label is None or len(label) != 2 or int(label[0]) != 1000:
        return False
    levels = {key[len(_VAE_DOWN):].split(".", 1)[0] for key in shapes if key.startswith(_VAE_DOWN)}
    return len(levels) == 3


def x4_configs() -> dict[str, Any]:
    """The released model's diffusers configs (``family`` "sd2": its text side is SD 2's)."""
    def read(*parts: str) -> dict[str, Any]:
        return json.loads(CONFIG_DIR.joinpath(*parts).read_text(encoding="utf-8"))

    return {"family": "sd2", "label": "SD x4 upscaler", "unet": read("unet", "config.json"),
            "vae": read("vae", "config.json"),
            "text_encoder": read("text_encoder", "config.json"),
            "scheduler": read("scheduler", "scheduler_config.json")}


@dataclass(frozen=True, eq=False)
class X4Parts:
    """What an x4 upscaler checkpoint adds to its MODEL: the ``low_res_scheduler`` config
    and ``max_noise_level`` (a diffusers folder's; the released model's otherwise)."""

    low_res_config: dict[str, Any] = field(
        default_factory=lambda: dict(DEFAULT_LOW_RES_SCHEDULER))
    max_noise_level: int = DEFAULT_MAX_NOISE_LEVEL

    def noise_level(self, noise_augmentation: float) -> int:
        """ComfyUI's level for a 0..1 augmentation: ``round(max_noise_level · a)``."""
        level = round(self.max_noise_level * float(noise_augmentation))
        top = int(self.low_res_config.get("num_train_timesteps", 1000)) - 1
        return min(max(level, 0), top)

    def low_res_scheduler(self) -> Any:
        import diffusers

        cls = getattr(diffusers, str(self.low_res_config.get("_class_name", "")), None)
        if cls is None or not hasattr(cls, "add_noise"):
            cls = diffusers.DDPMScheduler
        return cls.from_config(self.low_res_config)


def load_x4_parts(path: Path) -> X4Parts:
    """The parts of the checkpoint at ``path``: from a diffusers folder's
    ``low_res_scheduler/`` and ``model_index.json`` when it has them, else the defaults."""
    path = Path(path)
    if not path.is_dir():
        return X4Parts()
    index_file, low_res = path / "model_index.json", path / "low_res_scheduler"
    index = json.loads(index_file.read_text(encoding="utf-8")) if index_file.is_file() else {}
    config_file = low_res / "scheduler_config.json"
    config = (json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file()
              else dict(DEFAULT_LOW_RES_SCHEDULER))
    level = index.get("max_noise_level", DEFAULT_MAX_NOISE_LEVEL)
    if not isinstance(level, int) or not 0 < level <= 1000:
        raise ValueError(f"{path.name}: model_index.json's max_noise_level must be an integer "
                         f"in 1..1000, got {level!r}")
    return X4Parts(config, level)


class X4UpscalerModel(SamplerExtension):
    """Attached to an x4 upscaler's MODEL by Load Checkpoint: carries its :class:`X4Parts`
    for :class:`X4Upscale` (changes nothing by itself)."""

    def __init__(self, parts: X4Parts):
        self.parts = parts


def model_extensions(unet: Any, path: Path | None) -> tuple[SamplerExtension, ...]:
    """The MODEL extensions of a freshly loaded checkpoint: ``(X4UpscalerModel,)`` for an
    x4 upscaler, else none."""
    if not is_x4_unet(unet):
        return ()
    return (X4UpscalerModel(load_x4_parts(path) if path is not None else X4Parts()),)


# --- conditioning -------------------------------------------------------------------------

def low_res_pixels(images: torch.Tensor, scale_ratio: float) -> tuple[torch.Tensor, int, int]:
    """ComfyUI's SD_4XUpscale_Conditioning sizes: the output is ``round(side · scale_ratio)``
    pixels a side; the latent (and the low-res image on the UNet's channels) is a quarter
    of that. Returns the image ``[B, 3, h, w]`` in -1..1 (bilinear, centre crop) and
    ``(h, w)``."""
    from nodes.diffusion.resize import common_upscale

    width = max(1, round(images.shape[2] * float(scale_ratio)))
    height = max(1, round(images.shape[1] * float(scale_ratio)))
    if width < 4 or height < 4:
        raise ValueError(f"scale_ratio {scale_ratio} makes a {width}x{height} px output: the "
                         "upscaler needs at least 4x4 (one latent); raise scale_ratio")
    pixels = images[..., :3].float().movedim(-1, 1) * 2.0 - 1.0
    pixels = common_upscale(pixels, width // 4, height // 4, "bilinear", "center")
    return pixels, height // 4, width // 4


def _rows_state(run: SamplingRun, levels: Sequence[int]) -> Any:
    from nodes.diffusion.unclip import _Row, _UnclipState

    entries = [*run.positive.entries, *run.negative.entries]
    rows = [_Row(entry.embeds.to(device=run.device, dtype=run.dtype),
                 torch.tensor([int(level)], dtype=torch.long, device=run.device))
            for entry, level in zip(entries, levels, strict=True)]
    return _UnclipState(rows, {"cond": 0, "uncond": len(run.positive.entries),
                               "sag": len(run.positive.entries) if run.do_cfg else 0})


class X4Upscale(ConcatChannels):
    """The low-res image on the x4 upscaler's 3 extra channels and its noise level as
    ``class_labels``; one object on both conditionings of SD_4XUpscale_Conditioning."""

    label = "low-res image"

    def __init__(self, pixels: torch.Tensor, noise_augmentation: float = 0.0):
        #: ``[B, 3, h, w]`` in -1..1 at the latent size
        self.pixels = pixels
        self.noise_augmentation = float(noise_augmentation)

    def setup(self, run: SamplingRun) -> None:
        unet = run.model.unet
        if not is_x4_unet(unet):
            channels = int(unet.config.in_channels)
            kind = unet_kind(channels)
            what = kind[0] if kind and channels != X4_UNET_CHANNELS else \
                f"a model with {channels} input channels and no noise-level class embedding"
            raise ValueError(
                f"SD_4XUpscale_Conditioning needs the Stable Diffusion x4 upscaler (a UNet with "
                f"7 input channels: 4 latents + the low-res image, and a noise-level class "
                f"embedding), but this MODEL is {what}; load stable-diffusion-x4-upscaler "
                "(x4-upscaler-ema.safetensors or its diffusers folder) with Load Checkpoint")
        ours = [ext for ext in run.extensions if isinstance(ext, X4Upscale)]
        if len(ours) > 1:
            raise ValueError("this run has more than one SD_4XUpscale_Conditioning: give the "
                             "positive and the negative of one node to the sampler")
        parts = next((ext.parts for ext in run.model.extensions
                      if isinstance(ext, X4UpscalerModel)), X4Parts())
        level = parts.noise_level(self.noise_augmentation)
        run.state[(self, "image")] = self._noised(run, parts, level)
        super().setup(run)
        levels = [level if self._on(entry) else 0
                  for entry in (*run.positive.entries, *run.negative.entries)]
        run.state[(self, "labels")] = _rows_state(run, levels)

    def _noised(self, run: SamplingRun, parts: X4Parts, level: int) -> torch.Tensor:
        """The low-res image, noised to the level (the pipeline's first generator draw)."""
        from diffusers.utils.torch_utils import randn_tensor

        pixels = self.pixels.detach().to(device="cpu", dtype=torch.float32)
        if self.noise_augmentation <= 0:
            return pixels
        generator = torch.Generator("cpu").manual_seed(int(run.params.seed))
        noise = randn_tensor(pixels.shape, generator=generator, device=pixels.device,
                             dtype=pixels.dtype)
        levels = torch.tensor([level], dtype=torch.long)
        return parts.low_res_scheduler().add_noise(pixels, noise, levels)

    def channels(self, run: SamplingRun) -> torch.Tensor:
        from nodes.diffusion.resize import common_upscale

        image = run.state[(self, "image")]
        height, width = run.init_latents.shape[-2:]
        if tuple(image.shape[-2:]) != (height, width):  # another latent size: as ComfyUI
            image = common_upscale(image, int(width), int(height), "bilinear", "center")
        return image

    def channels_for_role(self, run: SamplingRun, role: str,
                          channels: torch.Tensor) -> torch.Tensor:
        if role == "uncond" and not any(self._on(e) for e in run.negative.entries):
            return torch.zeros_like(channels)
        return channels

    def _on(self, entry: Any) -> bool:
        return any(ext is self for ext in entry.options.get("extensions", ()))

    def denoise(self, run: SamplingRun, denoise: Denoise) -> Denoise:
        # the hook goes on inside the sampler's try, so teardown always removes it
        from nodes.diffusion.unclip import _ClassLabelsHook

        state = run.state.get((self, "labels"))
        if state is not None:
            state.handles.append(run.model.unet.register_forward_pre_hook(
                _ClassLabelsHook(run, state), with_kwargs=True))
        return denoise

    def teardown(self, run: SamplingRun) -> None:
        super().teardown(run)
        run.state.pop((self, "image"), None)
        state = run.state.pop((self, "labels"), None)
        if state is not None:
            while state.handles:
                state.handles.pop().remove()


def with_upscale(cond: Conditioning, extension: X4Upscale) -> Conditioning:
    """``cond`` with ``extension`` replacing any x4 upscale conditioning it carries."""
    from dataclasses import replace

    from nodes.diffusion.handles import Conditioning

    entries = []
    for entry in cond.entries:
        kept = tuple(e for e in entry.options.get("extensions", ())
                     if not isinstance(e, X4Upscale))
        entries.append(replace(entry, options={**entry.options,
                                               "extensions": (*kept, extension)}))
    return Conditioning(tuple(entries))
