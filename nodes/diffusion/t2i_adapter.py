"""T2I-Adapter (Mou et al. 2023) as a sampler extension, with the math of diffusers'
``StableDiffusionAdapterPipeline``.

An adapter turns the control image into one feature map per UNet down block. They do
not depend on the step, so each applied adapter runs once per sampling run
(:class:`T2IAdapterFeatures`.setup); at every step where it acts the features go into
``UNetCall.down_intrablock_additional_residuals``, which the UNet adds to its down
blocks' hidden states. Features are multiplied by ``scale`` (the pipeline's
``adapter_conditioning_scale``); several adapters add up, which is diffusers'
``MultiAdapter`` with the scales as its ``adapter_weights``. A ControlNet in the same
run adds its residuals after the down blocks as usual.

Steps: an adapter acts while ``i < int(n * factor)`` (``adapter_conditioning_factor``,
the rule of diffusers' SDXL adapter pipeline; the SD 1.x pipeline always acts) and,
applied through ComfyUI's ``ControlNetApplyAdvanced``, within its start/end percents
by the ControlNet rule (:func:`nodes.diffusion.controlnet.controlnet_keep`).

The control image (IMAGE, 0..1, not normalised) is used at the generation size; an
image of another size is resized as the pipeline resizes a PIL image (Lanczos on the
8-bit pixels), not as the ControlNet pipeline resizes tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers.utils import PIL_INTERPOLATION
from PIL import Image

from nodes.diffusion.controlnet import (
    attached_rows,
    control_pixels,
    controlnet_keep,
    match_batch,
    pad_rows,
    row_range,
)
from nodes.diffusion.extensions import SamplerExtension, Step, UNetCall

if TYPE_CHECKING:
    from nodes.diffusion.sampling import SamplingRun

Shape = tuple[int, int, int]  # channels, height, width of one feature map


@dataclass(frozen=True)
class Adapter:
    """CONTROL_NET holding a T2I-Adapter: a diffusers ``T2IAdapter`` and its file name."""

    model: Any
    name: str = ""

    @property
    def in_channels(self) -> int:
        return int(self.model.config.in_channels)

    @property
    def downscale_factor(self) -> int:
        """The pixel-unshuffle factor: the first feature is this much smaller than the image."""
        return int(self.model.config.downscale_factor)

    @property
    def label(self) -> str:
        return self.name or "the T2I-Adapter"


def resize_like_pil(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` in 0..1 as ``_preprocess_adapter_image`` resizes a PIL image:
    8-bit pixels, Lanczos, back to float / 255. An image loaded from an 8-bit file gets
    exactly the pipeline's pixels."""
    out = []
    for img in x:
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        resized = np.asarray(pil.resize((width, height), resample=PIL_INTERPOLATION["lanczos"]))
        resized = resized[..., None] if resized.ndim == 2 else resized
        out.append(torch.from_numpy(resized.astype(np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out)


def intrablock_shapes(unet: Any, height: int, width: int) -> tuple[list[Shape], Shape]:
    """Where the UNet adds adapter features, for latents of ``height`` x ``width``.

    One shape per down block: a cross-attention block adds its feature before its
    downsampler, a plain block after it (diffusers' ``UNet2DConditionModel``). The second
    value is the mid block's output, which takes one more feature of its shape (SDXL)."""
    shapes: list[Shape] = []
    h, w = height, width
    channels = 0
    for block in unet.down_blocks:
        channels = int(block.resnets[-1].out_channels)
        if getattr(block, "has_cross_attention", False):
            shapes.append((channels, h, w))
        if block.downsamplers is not None:
            h, w = (h + 1) // 2, (w + 1) // 2  # stride-2 convolution, padding 1
        if not getattr(block, "has_cross_attention", False):
            shapes.append((channels, h, w))
    return shapes, (channels, h, w)


def adapter_image_size(adapter: Adapter, unet: Any, height: int, width: int
                       ) -> tuple[int, int]:
    """The control image size for ``height`` x ``width`` latents: the generation size.

    The adapter's first feature is its image over ``downscale_factor``; it must meet the
    UNet's first down block (at latent size, or half of it after a plain block's
    downsampler: SDXL-style adapters)."""
    shapes, _ = intrablock_shapes(unet, height, width)
    first_h = shapes[0][1] if shapes else height
    factor = adapter.downscale_factor
    scale = factor // 2 if first_h != height and factor % 2 == 0 else factor
    image_h, image_w = height * scale, width * scale
    if image_h % factor or image_w % factor:
        raise ValueError(f"{adapter.label} needs an image size that is a multiple of "
                         f"{factor} (this latent makes {image_w}x{image_h}); pick another "
                         "width/height")
    return image_h, image_w


def fitting_features(adapter: Adapter, features: list[torch.Tensor], unet: Any,
                     height: int, width: int) -> list[torch.Tensor]:
    """The features the UNet will use: one per down block (and one for the mid block when
    the adapter has it), or a ValueError that says why the adapter does not fit."""
    want, mid = intrablock_shapes(unet, height, width)
    got = [tuple(int(v) for v in f.shape[1:]) for f in features]
    if got[:len(want)] != want:
        raise ValueError(
            f"{adapter.label} does not fit this model: its features (channels, height, "
            f"width) are {got}, the UNet's down blocks take {want} for this image size "
            "(an adapter made for another model, e.g. SDXL on SD 1.x?)")
    n = len(want) + (len(got) > len(want) and got[len(want)] == mid)
    return features[:n]  # the UNet ignores the rest; dropping them changes nothing


def add_intrablock(call: UNetCall, features: list[torch.Tensor]) -> None:
    """Sum adapter features with any already in the call (several adapters)."""
    have = call.down_intrablock_additional_residuals
    if have is None:
        call.down_intrablock_additional_residuals = list(features)
        return
    common = [a + b for a, b in zip(have, features, strict=False)]
    call.down_intrablock_additional_residuals = (
        common + list(have[len(common):]) + list(features[len(common):]))


@dataclass
class _RunState:
    features: list[torch.Tensor]  # [batch, C, h, w] each, scaled, on the UNet's device/dtype
    keep: list[bool]
    rows: str  # which CFG halves the adapter acts on: "all", "cond" or "uncond"


class T2IAdapterFeatures(SamplerExtension):
    """Adds one T2I-Adapter's features to the UNet call at every step where it acts.

    Attached to the positive and the negative conditioning (both apply nodes do that)
    it acts on the whole CFG batch, as the pipeline; on the positive only (ComfyUI's
    old Apply ControlNet) the unconditional half gets nothing.
    """

    handles_large_latents = True  # the control image sets the layout

    def __init__(self, adapter: Adapter, image: torch.Tensor, scale: float = 1.0,
                 factor: float = 1.0, start: float = 0.0, end: float = 1.0):
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"T2I-Adapter start ({start}) must be below end ({end}), "
                             "both within 0..1")
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"adapter_conditioning_factor must be within 0..1, got {factor}")
        self.adapter = adapter
        self.image = image
        self.scale = float(scale)
        self.factor = float(factor)
        self.start = float(start)
        self.end = float(end)

    def __cache_nbytes__(self) -> dict[str, int]:
        """What a cached CONDITIONING holding this keeps alive: the adapter and the image."""
        from engine.cache import value_nbytes

        return value_nbytes((self.adapter, self.image))

    def keep(self, steps: int) -> list[bool]:
        """Whether the adapter acts at each of ``steps`` steps."""
        window = controlnet_keep(steps, self.start, self.end)
        return [bool(window[i]) and i < int(steps * self.factor) for i in range(steps)]

    def setup(self, run: SamplingRun) -> None:
        model = self.adapter.model
        batch, _, h, w = run.init_latents.shape
        unet = run.model.unet
        height, width = adapter_image_size(self.adapter, unet, h, w)
        pixels = control_pixels(self.image, height, width, self.adapter.in_channels,
                                resize=resize_like_pil, owner=self.adapter.label)
        if pixels.shape[0] not in (1, batch):
            match_batch(pixels, batch)  # the error message, before running the adapter
        # Features of the image batch as given, then repeated: the pipeline's order.
        features = model(pixels.to(device=model.device, dtype=model.dtype))
        features = fitting_features(self.adapter, features, unet, h, w)
        features = [match_batch(f * self.scale, batch).to(run.device, run.dtype)
                    for f in features]
        run.state[self] = _RunState(features, self.keep(run.schedule_length),
                                    attached_rows(run, self))

    def unet_inputs(self, run: SamplingRun, step: Step, call: UNetCall) -> None:
        state: _RunState = run.state[self]
        if not state.keep[run.schedule_index(step)]:
            return
        batch = run.init_latents.shape[0]
        total = call.sample.shape[0]
        lo, hi = row_range(run, state.rows, total)
        if hi == lo:
            return
        # A fresh list every call: the UNet pops its entries.
        add_intrablock(call, [pad_rows(f.repeat((hi - lo) // batch, 1, 1, 1), lo, hi, total)
                              for f in state.features])

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)
