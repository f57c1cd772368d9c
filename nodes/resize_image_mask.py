"""Resize Image/Mask: ComfyUI's ``ResizeImageMaskNode``, which its front end and templates
now put where Upscale Image chains used to be.

One node resizes an IMAGE or a MASK (the output is of the same type) in the way chosen
by ``resize_type``, a DynamicCombo whose options bring their own inputs
(``resize_type.width``, ``resize_type.multiplier``, ...; see :mod:`engine.dynamic`).
The pixels are resampled by ComfyUI's ``common_upscale`` (:mod:`nodes.diffusion.resize`,
through Upscale Image's helper), so every method matches Upscale Image's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Output
from engine.dynamic import chosen_option, dynamic_combo
from engine.node import NamedInputsNode, input_spec
from nodes.conditioning import MAX_RESOLUTION
from nodes.upscale import CROPS, IMAGE_METHODS

if TYPE_CHECKING:
    import torch

SCALE_DIMENSIONS = "scale dimensions"
SCALE_BY = "scale by multiplier"
SCALE_LONGER = "scale longer dimension"
SCALE_SHORTER = "scale shorter dimension"
SCALE_WIDTH = "scale width"
SCALE_HEIGHT = "scale height"
SCALE_TOTAL_PIXELS = "scale total pixels"
MATCH_SIZE = "match size"
SCALE_TO_MULTIPLE = "scale to multiple"
TEMPLATE = "input_type"  # ComfyUI's MatchType template id


def _side(default: int, what: str, low: int = 0) -> tuple[Any, Any]:
    return int, Input(default, min=low, max=MAX_RESOLUTION, step=1, description=what)


def _crop() -> tuple[Any, Any]:
    return str, Input("center", choices=CROPS, description=(
        "When the new aspect ratio differs: 'center' cuts the middle to it first, "
        "'disabled' stretches."))


OPTIONS: dict[str, dict[str, tuple[Any, Any]]] = {
    SCALE_DIMENSIONS: {
        "width": _side(512, "New width in pixels; 0 follows the height, keeping the aspect "
                            "ratio (both 0: unchanged)."),
        "height": _side(512, "New height in pixels; 0 follows the width, keeping the "
                             "aspect ratio."),
        "crop": _crop(),
    },
    SCALE_BY: {"multiplier": (float, Input(1.0, min=0.01, max=8.0, step=0.01, description=(
        "Factor for both sides (2.0 doubles, 0.5 halves), each rounded to whole pixels.")))},
    SCALE_LONGER: {"longer_size": _side(512, "New length of the longer side; the other "
                                             "follows the aspect ratio.")},
    SCALE_SHORTER: {"shorter_size": _side(512, "New length of the shorter side; the other "
                                               "follows the aspect ratio.")},
    SCALE_WIDTH: {"width": _side(512, "New width; the height follows the aspect ratio "
                                      "(0: unchanged).")},
    SCALE_HEIGHT: {"height": _side(512, "New height; the width follows the aspect ratio "
                                        "(0: unchanged).")},
    SCALE_TOTAL_PIXELS: {"megapixels": (float, Input(1.0, min=0.01, max=16.0, step=0.01,
                                                     description=(
        "About this many × 1024² pixels (1.0: 1024x1024 for a square), aspect ratio kept.")))},
    MATCH_SIZE: {
        "match": (Any, Input(type="IMAGE,MASK", description=(
            "An image or mask whose width and height the input takes."))),
        "crop": _crop(),
    },
    SCALE_TO_MULTIPLE: {"multiple": _side(8, "Shrink so both sides are multiples of this "
                                             "(8 or 64 suit a VAE), cutting the least.",
                                          low=1)},
}


@dataclass(frozen=True)
class Plan:
    """How to resize a ``width`` x ``height`` picture: to ``size`` (w, h) with ``crop``,
    then keep the ``window`` (x0, y0, x1, y1); ``size`` None: unchanged."""

    size: tuple[int, int] | None
    crop: str = "disabled"
    window: tuple[int, int, int, int] | None = None


def plan(kind: str, width: int, height: int, params: dict[str, Any],
         match_size: tuple[int, int] | None = None) -> Plan:
    """ComfyUI's arithmetic for each ``resize_type`` (``params`` by short input name;
    ``match_size`` the (w, h) of ``match``)."""
    if kind == SCALE_BY:
        m = params["multiplier"]
        return Plan((round(width * m), round(height * m)))
    if kind in (SCALE_DIMENSIONS, SCALE_WIDTH, SCALE_HEIGHT):
        w = params["width"] if kind != SCALE_HEIGHT else 0
        h = params["height"] if kind != SCALE_WIDTH else 0
        if w == 0 and h == 0:
            return Plan(None)
        if w == 0:
            w = max(1, round(width * h / height))
        elif h == 0:
            h = max(1, round(height * w / width))
        return Plan((w, h), params.get("crop", "disabled") if kind == SCALE_DIMENSIONS
                    else "disabled")
    if kind in (SCALE_LONGER, SCALE_SHORTER):
        size = params["longer_size" if kind == SCALE_LONGER else "shorter_size"]
        first_is_height = height > width if kind == SCALE_LONGER else height < width
        if width == height:
            return Plan((size, size))
        if first_is_height:
            return Plan((round(width / height * size), size))
        return Plan((size, round(height / width * size)))
    if kind == SCALE_TOTAL_PIXELS:
        scale = math.sqrt(int(params["megapixels"] * 1024 * 1024) / (width * height))
        return Plan((round(width * scale), round(height * scale)))
    if kind == MATCH_SIZE:
        if match_size is None:
            raise ValueError("resize_type 'match size' needs resize_type.match linked")
        return Plan(match_size, params["crop"])
    if kind == SCALE_TO_MULTIPLE:
        return _cover(width, height, params["multiple"])
    raise ValueError(f"unknown resize_type {kind!r}: choose one of {', '.join(OPTIONS)}")


def _cover(width: int, height: int, multiple: int) -> Plan:
    """The largest multiple-of-``multiple`` size inside the picture: scale so it covers
    that size, then keep the middle (ComfyUI's scale_to_multiple_cover)."""
    target_w, target_h = width // multiple * multiple, height // multiple * multiple
    if multiple <= 1 or target_w == 0 or target_h == 0 or (target_w, target_h) == (
            width, height):
        return Plan(None)
    s_w, s_h = target_w / width, target_h / height
    if s_w >= s_h:
        scaled_w, scaled_h = target_w, max(target_h, math.ceil(height * s_w))
    else:
        scaled_w, scaled_h = max(target_w, math.ceil(width * s_h)), target_h
    x0, y0 = (scaled_w - target_w) // 2, (scaled_h - target_h) // 2
    return Plan((scaled_w, scaled_h), window=(x0, y0, x0 + target_w, y0 + target_h))


def _picture(value: Any, what: str) -> tuple[torch.Tensor, bool]:
    """An IMAGE ``[B, H, W, C]`` of ``value`` and whether it was a MASK (made a
    one-channel image)."""
    import torch

    from nodes.limits import check_image

    if not isinstance(value, torch.Tensor) or value.dim() not in (2, 3, 4):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"the {what} must be an IMAGE [B, H, W, C] or a MASK [B, H, W], "
                         f"got {shape}")
    if value.dim() == 4:
        check_image(value, what)
        return value, False
    mask = value[None] if value.dim() == 2 else value
    if 0 in mask.shape:
        raise ValueError(f"the {what} mask is empty (shape {tuple(value.shape)})")
    return mask[..., None], True


def resize(value: Any, kind: str, params: dict[str, Any], method: str,
           match: Any = None) -> Any:
    """``value`` (IMAGE or MASK) resized as ``kind`` says; the same type back."""
    from nodes.upscale import _scale_image

    image, is_mask = _picture(value, "input")
    height, width = int(image.shape[1]), int(image.shape[2])
    match_size = None
    if kind == MATCH_SIZE and match is not None:
        reference, _ = _picture(match, "resize_type.match")
        match_size = (int(reference.shape[2]), int(reference.shape[1]))
    p = plan(kind, width, height, params, match_size)
    if p.size is None:
        return value
    w, h = p.size
    if w < 1 or h < 1:
        raise ValueError(f"{kind} turns the {width}x{height} input into {w}x{h} pixels: "
                         f"choose a larger {_size_input(kind)}")
    out = _scale_image(image, w, h, method, p.crop)
    if p.window is not None:
        x0, y0, x1, y1 = p.window
        out = out[:, y0:y1, x0:x1]
    return out[..., 0] if is_mask else out


def _size_input(kind: str) -> str:
    names = [n for n in OPTIONS.get(kind, {}) if n not in ("crop", "match")]
    return "resize_type." + names[0] if names else "size"


class ResizeImageMaskNode(NamedInputsNode):
    """Resize an image or a mask (the output is the same type) in one of nine ways,
    chosen by ``resize_type``, which then shows only its own settings: exact
    dimensions (0 for a side keeps the aspect ratio; ``crop`` center cuts to the new
    ratio), a multiplier, the longer or shorter side, the width or height alone, a
    total of megapixels, the size of another image or mask (``match``), or the largest
    size whose sides are multiples of ``multiple`` (cutting the least). ``scale_method``:
    ``area`` for shrinking, ``lanczos`` for enlarging photos, ``nearest-exact`` for masks
    with hard edges and pixel art."""

    TYPE = "ResizeImageMaskNode"
    DISPLAY_NAME = "Resize Image/Mask"
    CATEGORY = "transform"
    OUTPUTS = (Output("IMAGE,MASK", "resized", match=TEMPLATE),)

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        kind = inputs.get("resize_type")
        for option, name in ((SCALE_LONGER, "longer_size"), (SCALE_SHORTER, "shorter_size")):
            key = f"resize_type.{name}"
            if kind == option and inputs.get(key) == 0:
                return [(key, f"{key} is 0, which leaves no pixels: give the new length "
                              "in pixels (at least 1)")]
        return []

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        values = self.inputs
        kind = values["resize_type"]
        option = chosen_option(self.INPUT_SPECS["resize_type"], kind)
        params = {s.name.split(".", 1)[1]: values.get(s.name)
                  for s in (option.inputs if option else ())}
        return (resize(values["input"], kind, params, values["scale_method"],
                       params.get("match")),)


ResizeImageMaskNode.INPUT_SPECS = {
    "input": input_spec("input", Any, Input(type="IMAGE,MASK", match=TEMPLATE,
                                            description="The image or mask to resize.")),
    **dynamic_combo("resize_type", OPTIONS, description=(
        "How to resize: to dimensions, by a factor, by one side, to a pixel count, to "
        "another picture's size, or to multiples of a number.")),
    "scale_method": input_spec("scale_method", str, Input("area", choices=IMAGE_METHODS,
                                                          description=(
        "Resampling: area for shrinking, lanczos for enlarging, nearest-exact for hard "
        "edges."))),
}

NODE_CLASSES = (ResizeImageMaskNode,)
