"""Batch Images / Masks / Latents: ComfyUI's growing batch nodes (``BatchImagesNode``, ...).

Each takes any number of inputs, ``images.image0``, ``images.image1``, ... (ComfyUI's
Autogrow names, which its front end now puts in place of Image Batch), and joins them
into one batch in that order: every item is fitted to the first's size (bilinear, the
middle cropped to its aspect ratio), images with fewer channels get an opaque alpha.
``/object_info`` declares them as one growing input (engine/autogrow.py), as ComfyUI
does; the canvas shows the inputs up to one past the last linked.
"""

from __future__ import annotations

from typing import Any, ClassVar

from engine import ExecutionContext, Input, Output
from engine.autogrow import autogrow
from engine.node import NamedInputsNode
from nodes.diffusion.handles import Latent, Tensor

MAX_ITEMS = 50  # ComfyUI's limit
MIN_ITEMS = 2


class _BatchGrow(NamedInputsNode):
    """Base: ``MAX_ITEMS`` inputs ``<GROUP>.<PREFIX><k>`` of ``KIND``, the first
    ``MIN_ITEMS`` required."""

    GROUP: ClassVar[str] = ""
    PREFIX: ClassVar[str] = ""
    KIND: ClassVar[str] = ""
    ANNOTATION: ClassVar[Any] = Any

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: object) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.GROUP:  # ComfyUI's Autogrow: template input PREFIX, slots PREFIX0, ...
            cls.INPUT_SPECS = autogrow(cls.GROUP, cls.PREFIX, cls.ANNOTATION,
                                       Input(type=cls.KIND), prefix=cls.PREFIX,
                                       min=MIN_ITEMS, max=MAX_ITEMS)

    def items(self) -> list[Any]:
        """The linked inputs' values, in input order."""
        values = [self.inputs.get(name) for name in self.INPUT_SPECS]
        return [v for v in values if v is not None]


class BatchImagesNode(_BatchGrow):
    """Join any number of images into one batch (ComfyUI's Batch Images): each fitted
    to the first's size (bilinear, centre-cropped to its aspect), RGB ones given an
    opaque alpha when another has one."""

    TYPE = "BatchImagesNode"
    DISPLAY_NAME = "Batch Images"
    CATEGORY = "image"
    OUTPUTS = (Output("IMAGE"),)
    GROUP, PREFIX, KIND, ANNOTATION = "images", "image", "IMAGE", Tensor

    def execute(self, ctx: ExecutionContext) -> tuple[Tensor]:
        names = [name for name in self.INPUT_SPECS if self.inputs.get(name) is not None]
        return (batch_images(self.items(), names),)


class BatchMasksNode(_BatchGrow):
    """Join any number of masks into one batch (ComfyUI's Batch Masks), each fitted to
    the first's size."""

    TYPE = "BatchMasksNode"
    DISPLAY_NAME = "Batch Masks"
    CATEGORY = "mask"
    OUTPUTS = (Output("MASK"),)
    GROUP, PREFIX, KIND, ANNOTATION = "masks", "mask", "MASK", Tensor

    def execute(self, ctx: ExecutionContext) -> tuple[Tensor]:
        import torch

        masks = [m[None] if m.ndim == 2 else m for m in self.items()]
        for k, mask in enumerate(masks):
            if mask.ndim != 3 or 0 in mask.shape:
                raise ValueError(f"mask {k} must be a MASK [B, H, W], got shape "
                                 f"{tuple(mask.shape)}")
        size = masks[0].shape[1:]
        return (torch.cat([_fit(m[:, None], size)[:, 0].to(masks[0].dtype) for m in masks]),)


class BatchLatentsNode(_BatchGrow):
    """Join any number of latents into one batch (ComfyUI's Batch Latents), each
    stretched to the first's size, as Latent Batch joins two (noise masks and batch
    indices follow)."""

    TYPE = "BatchLatentsNode"
    DISPLAY_NAME = "Batch Latents"
    CATEGORY = "latent"
    OUTPUTS = (Output("LATENT"),)
    GROUP, PREFIX, KIND, ANNOTATION = "latents", "latent", "LATENT", Latent

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        from nodes.latent_ops import batch_latents

        latents = self.items()
        out = latents[0]
        for k, latent in enumerate(latents[1:], 1):
            out = batch_latents(out, latent, ("latent 0", f"latent {k}"))
        return (out,)


def batch_images(images: list[Any], names: list[str]) -> Any:
    """One IMAGE batch of ``images`` (called ``names`` in errors), in order: each fitted
    to the first's size, RGB given an opaque alpha when another image has one (ComfyUI's
    Image Batch and Batch Images)."""
    import torch

    from nodes.limits import check_image

    for image, name in zip(images, names, strict=True):
        check_image(image, name)
    channels = max(image.shape[-1] for image in images)
    first = images[0]
    out = []
    for image in images:
        if image.shape[-1] < channels:  # RGB among RGBA: opaque
            image = torch.nn.functional.pad(image, (0, channels - image.shape[-1]), value=1.0)
        out.append(_fit(image.movedim(-1, 1), first.shape[1:3]).movedim(1, -1)
                   .to(first.dtype))
    return torch.cat(out)


def _fit(samples: Any, size: Any) -> Any:
    """``[B, C, H, W]`` at ``size`` (h, w): bilinear after a centre crop, as ComfyUI's
    ``common_upscale(..., "bilinear", "center")``; unchanged when it already fits."""
    from nodes.diffusion.resize import common_upscale

    height, width = (int(v) for v in size)
    if tuple(samples.shape[-2:]) == (height, width):
        return samples
    return common_upscale(samples, width, height, "bilinear", "center")


NODE_CLASSES = (BatchImagesNode, BatchMasksNode, BatchLatentsNode)
