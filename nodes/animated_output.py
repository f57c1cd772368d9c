"""Animated output: an image batch saved as one animated WEBP or PNG (APNG), as ComfyUI's
SaveAnimatedWEBP / SaveAnimatedPNG, with the prompt and workflow embedded so the file
can be dropped back onto the canvas."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from engine import ExecutionContext, Input, NodeResult
from nodes.output_files import SavesNumberedFiles, file_metadata, save_numbered, split_prefix

if TYPE_CHECKING:
    from pathlib import Path

    from PIL import Image
    from torch import Tensor

#: WEBP's encoder effort by ComfyUI's names (Pillow's ``method``, 0-6)
WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}


def _save(ctx: ExecutionContext, images: Tensor, prefix: str, suffix: str,
          write: Any) -> NodeResult:
    from nodes.image import image_to_pil

    frames = image_to_pil(images, truncate=True)  # as ComfyUI writes its animations
    if not frames:
        raise ValueError("no images to save: the batch is empty")
    folder, subfolder, stem = split_prefix(ctx.env, "output", prefix, "Steerflow",
                                           frames[0].size, prompt=ctx.prompt)
    path, _ = save_numbered(folder, stem, suffix, lambda tmp: write(tmp, frames))
    entry = {"filename": path.name, "subfolder": subfolder, "type": "output"}
    return NodeResult((), {"images": [entry], "animated": [True]})


def _duration(fps: float) -> int:
    return max(1, round(1000 / fps))


class _SavesAnimation(SavesNumberedFiles):
    """The inputs both animated savers share (a base class, not a node)."""

    CATEGORY = "image/animation"
    OUTPUT_NODE = True
    OUTPUTS = ()

    images: Tensor = Input(type="IMAGE")
    filename_prefix: str = Input("Steerflow", description="May contain a subfolder")
    fps: float = Input(6.0, min=0.01, max=1000.0, step=0.01)


class SaveAnimatedWEBP(_SavesAnimation):
    """Save an image batch as one animated WEBP (the frames in batch order, ``fps``
    frames a second), lossless or at ``quality``; the prompt and workflow go in its EXIF
    (ComfyUI's tags), so dropping it on the canvas reopens the workflow."""

    TYPE = "SaveAnimatedWEBP"
    DISPLAY_NAME = "SaveAnimatedWEBP"
    SUFFIX = ".webp"

    lossless: bool = Input(True)
    quality: int = Input(80, min=0, max=100)
    method: str = Input("default", choices=tuple(WEBP_METHODS))

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        meta = file_metadata(ctx)

        def write(tmp: Path, frames: list[Image.Image]) -> None:
            exif = frames[0].getexif()
            exif[0x0110] = "prompt:" + json.dumps(meta.pop("prompt"))  # ComfyUI's tags
            for tag, (key, value) in zip(range(0x010F, 0x0100, -1), meta.items(),
                                         strict=False):
                exif[tag] = f"{key}:{json.dumps(value)}"
            frames[0].save(tmp, format="WEBP", save_all=True, append_images=frames[1:],
                           duration=_duration(self.fps), loop=0, lossless=self.lossless,
                           quality=self.quality, method=WEBP_METHODS[self.method],
                           exif=exif)

        return _save(ctx, self.images, self.filename_prefix, self.SUFFIX, write)


class SaveAnimatedPNG(_SavesAnimation):
    """Save an image batch as one animated PNG (APNG: lossless, larger than WEBP), the
    prompt and workflow in its text chunks as Save Image's."""

    TYPE = "SaveAnimatedPNG"
    DISPLAY_NAME = "SaveAnimatedPNG"
    SUFFIX = ".png"

    compress_level: int = Input(4, min=0, max=9)

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        for key, value in file_metadata(ctx).items():
            info.add_text(str(key), json.dumps(value))

        def write(tmp: Path, frames: list[Image.Image]) -> None:
            frames[0].save(tmp, format="PNG", save_all=True, append_images=frames[1:],
                           duration=_duration(self.fps), loop=0, pnginfo=info,
                           compress_level=self.compress_level)

        return _save(ctx, self.images, self.filename_prefix, self.SUFFIX, write)


NODE_CLASSES = (SaveAnimatedWEBP, SaveAnimatedPNG)
