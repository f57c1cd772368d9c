"""Depth2Image (Stable Diffusion 2 depth): a depth map as a fifth UNet input channel.

As diffusers' ``StableDiffusionDepth2ImgPipeline``: the depth map — given, or
predicted by a DPT / Depth Anything estimator from the image — is resized to the
latent grid (bicubic), normalised to [-1, 1] per image (min → -1, max → +1; these
estimators predict relative inverse depth, so near = +1) and concatenated after
the latents on every UNet pass, the same for every batch role. The concatenation
is the shared :class:`nodes.diffusion.concat.ConcatChannels`.

The estimator sees the image as 8-bit RGB through its own image processor, as the
pipeline does with a PIL image (and ComfyUI's depth preprocessors with an IMAGE).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from nodes.diffusion.concat import ConcatChannels, unet_kind
from nodes.limits import check_image

if TYPE_CHECKING:
    from nodes.diffusion.sampling import SamplingRun

#: in_channels of depth-to-image UNets: 4 latents + 1 depth.
DEPTH_UNET_CHANNELS = 5
#: transformers ``model_type`` → the class that predicts relative inverse depth
ESTIMATOR_CLASSES = {"dpt": "DPTForDepthEstimation",
                     "depth_anything": "DepthAnythingForDepthEstimation"}


@dataclass(frozen=True)
class DepthEstimator:
    """DEPTH_ESTIMATOR: a transformers depth model and its image processor."""

    model: Any
    processor: Any
    name: str = ""

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """IMAGE ``[B, H, W, C]`` → the model's ``predicted_depth`` ``[B, h, w]`` (its own
        resolution and scale; larger = nearer)."""
        from nodes.diffusion.memory import compute_device

        pixel_values = self.processor(images=to_pil(image), return_tensors="pt").pixel_values
        dtype = next(self.model.parameters()).dtype
        pixel_values = pixel_values.to(device=compute_device(self.model), dtype=dtype)
        depth = self.model(pixel_values).predicted_depth
        return depth.float()


def to_pil(image: torch.Tensor) -> list[Any]:
    """IMAGE ``[B, H, W, C]`` in 0..1 → 8-bit RGB PIL images (rounded, so an image read
    from an 8-bit file comes back exactly)."""
    from PIL import Image

    check_image(image, "image", (3, 4))
    pixels = image[..., :3].detach().float().cpu().clamp(0, 1).mul(255).round()
    return [Image.fromarray(p) for p in pixels.to(torch.uint8).numpy()]


def depth_from_image(depth: torch.Tensor) -> torch.Tensor:
    """A depth IMAGE ``[B, H, W, C]`` (grey, near = bright) → ``[B, H, W]``: the mean of its
    colour channels, so a grey map is itself and a tinted one still works."""
    check_image(depth, "depth map", (1, 3, 4))
    return depth[..., :3].float().mean(dim=-1)


def _span(depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    low = torch.amin(depth, dim=[1, 2, 3], keepdim=True)
    high = torch.amax(depth, dim=[1, 2, 3], keepdim=True)
    # a constant map (no depth to follow) reads as all far instead of 0/0
    return low, (high - low).clamp_min(torch.finfo(depth.dtype).tiny)


def latent_depth(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Raw depth ``[B, H, W]`` → the UNet's depth channel ``[B, 1, h, w]`` in [-1, 1]:
    bicubic to the latent ``size``, then min/max per image (the pipeline's
    ``prepare_depth_map``)."""
    depth = F.interpolate(depth.unsqueeze(1), size=size, mode="bicubic", align_corners=False)
    low, span = _span(depth)
    return 2.0 * (depth - low) / span - 1.0


def depth_picture(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Raw depth ``[B, h, w]`` → ``[B, H, W]`` in 0..1 at the image ``size`` (bicubic, as
    transformers' ``post_process_depth_estimation``), near = 1."""
    depth = F.interpolate(depth.unsqueeze(1), size=size, mode="bicubic", align_corners=False)
    low, span = _span(depth)
    return ((depth - low) / span)[:, 0]


class DepthConcat(ConcatChannels):
    """The depth channel after the latents on every UNet pass (a 5-channel UNet)."""

    label = "depth map"

    def __init__(self, depth: torch.Tensor):
        #: raw depth ``[1 or B, H, W]``, any scale and size; resized per run to the latent
        self.depth = depth

    def setup(self, run: SamplingRun) -> None:
        channels = int(run.model.unet.config.in_channels)
        if channels != DEPTH_UNET_CHANNELS:
            kind = unet_kind(channels)
            what = f"{kind[0]}" if kind else "a plain text-to-image model"
            raise ValueError(
                f"Depth2Image Conditioning needs a depth model (5 input channels: 4 latents "
                f"+ depth, e.g. stable-diffusion-2-depth), but this is {what} with "
                f"{channels}; load a depth checkpoint")
        super().setup(run)

    def channels(self, run: SamplingRun) -> torch.Tensor:
        size = tuple(run.init_latents.shape[-2:])
        return latent_depth(self.depth.to(device=run.device, dtype=run.dtype), size)


# --- loading -------------------------------------------------------------------------------

def load_depth_estimator(model_dir: Path, processor_dir: Path, *,
                         device: torch.device | str = "cpu", name: str = "",
                         budget: int | None = None) -> DepthEstimator:
    """Load a DPT or Depth Anything estimator from local files that passed
    ``nodes.depth2img.estimator_problem`` (safetensors only, never from the hub), in
    float32 (the pipeline's DPT-Hybrid has batch norms unfit for fp16). One bigger than
    ``budget`` bytes stays on the CPU with sequential offload (:func:`place_model`)."""
    import transformers
    from safetensors import SafetensorError

    from nodes.diffusion.memory import place_model

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    try:
        cls = getattr(transformers, ESTIMATOR_CLASSES[config["model_type"]])
        model = cls.from_pretrained(model_dir, local_files_only=True, use_safetensors=True,
                                    dtype=torch.float32)
        processor = transformers.AutoImageProcessor.from_pretrained(processor_dir,
                                                                    local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError,
            SafetensorError) as exc:
        raise ValueError(f"cannot load the depth estimator {name or model_dir.name}: "
                         f"{exc}") from exc
    return DepthEstimator(place_model(model, device, budget=budget), processor,
                          name or model_dir.name)
