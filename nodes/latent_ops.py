"""Latent batch, transform and arithmetic nodes: ComfyUI's Latent From Batch, Latent
Blend, Rotate / Flip / Crop Latent, LatentConcat, LatentCut, LatentAdd, LatentSubtract,
LatentMultiply, LatentInterpolate and LatentBatch (its node ids, inputs, defaults and bounds).

Two-latent nodes keep the first latent's noise mask and settings, as ComfyUI does, and
fit the second to the first first: stretched to its size (centre-cut to its aspect
ratio) and, for a smaller batch that divides the first's, repeated. Unlike ComfyUI,
nodes that move or pick latent pixels (rotate, flip, crop, batch) move the noise mask
and inpainting inputs with them, so they keep matching the samples.

A LATENT remembers which item of an earlier batch each row was (``batch_index``, as
ComfyUI's): Latent From Batch, Latent Batch and Repeat Latent Batch keep it, and the
sampler gives each row that item's initial noise, so a latent taken out of a batch
samples to the picture it had inside it; Latent Batch Seed Behavior sets it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from engine import ExecutionContext, Input, Node, Output
from nodes.conditioning import MAX_RESOLUTION
from nodes.diffusion.handles import Latent, Vae
from nodes.latent import LATENT_VAE_HELP, downscale_of
from nodes.limits import check_latent

if TYPE_CHECKING:
    import torch

ROTATIONS = ("none", "90 degrees", "180 degrees", "270 degrees")
FLIPS = ("x-axis: vertically", "y-axis: horizontally")
MIN_CROP_PX = 64  # ComfyUI keeps at least 64 px (8 latent pixels at 8x) after x, y


def _samples(latent: Latent, name: str) -> torch.Tensor:
    """``latent.samples``, checked to be a non-empty ``[B, C, h, w]``."""
    check_latent(latent.samples, name)
    return latent.samples


def _plain(latent: Latent, name: str, node: str) -> None:
    """Refuse a LATENT subclass: its extra per-sample state cannot follow the pixels."""
    if type(latent) is not Latent:
        raise ValueError(f"{name} ({type(latent).__name__}) carries per-sample state {node} "
                         "cannot carry along; apply it before the node that made that latent")


def _tile(value: torch.Tensor, batch: int) -> torch.Tensor:
    """A per-sample tensor cycled to exactly ``batch`` entries (ComfyUI's mask repeat)."""
    if value.shape[0] == batch:
        return value
    times = -(-batch // value.shape[0])
    return value.repeat(times, *([1] * (value.dim() - 1)))[:batch]


def _fit(second: torch.Tensor, first: torch.Tensor, names: tuple[str, str],
         method: str = "bilinear", repeat: bool = True) -> torch.Tensor:
    """``second`` stretched to ``first``'s size and, with ``repeat``, its batch repeated
    to ``first``'s (which it must divide); the channels must already agree."""
    from nodes.diffusion.resize import common_upscale

    if second.shape[1] != first.shape[1]:
        raise ValueError(f"{names[1]} has {second.shape[1]} channels but {names[0]} has "
                         f"{first.shape[1]}: both must come from the same VAE")
    second = second.to(first)
    h, w = first.shape[-2:]
    if second.shape[-2:] != first.shape[-2:]:
        second = common_upscale(second, int(w), int(h), method, "center")
    if repeat and second.shape[0] != first.shape[0]:
        if first.shape[0] % second.shape[0]:
            raise ValueError(f"{names[1]} has a batch of {second.shape[0]} and {names[0]} of "
                             f"{first.shape[0]}: give {names[1]} a batch of 1, the same "
                             "batch, or one that divides it")
        second = _tile(second, first.shape[0])
    return second


def _move(latent: Latent, samples: torch.Tensor,
          op: Callable[[torch.Tensor], torch.Tensor], latent_size: bool = False) -> Latent:
    """``latent`` with new ``samples`` and ``op`` applied to its noise mask and inpainting
    inputs too (``latent_size``: the noise mask is first brought to the latent grid)."""
    from nodes.diffusion.handles import InpaintCondition
    from nodes.diffusion.masking import as_mask4d, mask_to_latent

    mask = latent.noise_mask
    if mask is not None:
        grid = tuple(latent.samples.shape[-2:])
        mask = op(mask_to_latent(mask, grid) if latent_size else as_mask4d(mask))
    inpaint = latent.inpaint
    if inpaint is not None:
        inpaint = InpaintCondition(op(inpaint.mask), op(inpaint.masked_latents))
    return replace(latent, samples=samples, noise_mask=mask, inpaint=inpaint,
                   extension_results=())


def _arith(first: Latent, second: Latent, combine: Callable, method: str = "bilinear"
           ) -> tuple[Latent]:
    s1 = _samples(first, "samples1")
    s2 = _fit(_samples(second, "samples2"), s1, ("samples1", "samples2"), method)
    return (replace(first, samples=combine(s1, s2), extension_results=()),)


class LatentFromBatch(Node):
    """Take ``length`` latents starting at ``batch_index`` (negative counts from the end:
    -1 is the last) out of a batch, with their noise masks, e.g. to refine one image of
    a batch. A length past the end takes what is there."""

    TYPE = "LatentFromBatch"
    DISPLAY_NAME = "Latent From Batch"
    CATEGORY = "latent/batch"
    OUTPUTS = (Output("LATENT"),)

    samples: Latent = Input(type="LATENT")
    batch_index: int = Input(0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION)
    length: int = Input(1, min=1, max=64)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        samples = _samples(self.samples, "samples")
        _plain(self.samples, "samples", "Latent From Batch")
        batch = samples.shape[0]
        start = self.batch_index + batch if self.batch_index < 0 else self.batch_index
        if not 0 <= start < batch:
            raise ValueError(f"batch_index {self.batch_index} is outside the batch of {batch}: "
                             f"use 0..{batch - 1} (or -{batch}..-1 from the end)")
        stop = min(start + self.length, batch)

        def pick(value: torch.Tensor) -> torch.Tensor:
            # one mask for the whole batch stays one; else one per latent, cycled
            return value.clone() if value.shape[0] == 1 else _tile(value, batch)[start:stop]

        index = self.samples.batch_index or tuple(range(batch))
        return (replace(_move(self.samples, samples[start:stop].clone(), pick),
                        batch_index=tuple(index[start:stop])),)


class LatentBatchSeedBehavior(Node):
    """How a batch's latents get their initial noise: ``random`` (each its own, the
    usual batch) or ``fixed`` (all the first latent's noise: the same seed for every
    image, e.g. to compare prompts or settings side by side)."""

    TYPE = "LatentBatchSeedBehavior"
    DISPLAY_NAME = "Latent Batch Seed Behavior"
    CATEGORY = "latent/advanced"
    OUTPUTS = (Output("LATENT"),)

    samples: Latent = Input(type="LATENT")
    seed_behavior: str = Input("fixed", choices=("random", "fixed"))

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        batch = _samples(self.samples, "samples").shape[0]
        if self.seed_behavior == "random":
            return (replace(self.samples, batch_index=None),)
        first = (self.samples.batch_index or (0,))[0]
        return (replace(self.samples, batch_index=(first,) * batch),)


class LatentBatch(Node):
    """Join two latent batches into one (``samples1``'s, then ``samples2``'s), e.g. to
    sample both in one run. ``samples2`` is stretched to ``samples1``'s size. Each
    latent keeps its own noise mask (none: repaint all); inpainting inputs must be on
    both or neither."""

    TYPE = "LatentBatch"
    DISPLAY_NAME = "Latent Batch"
    CATEGORY = "latent/batch"
    OUTPUTS = (Output("LATENT"),)

    samples1: Latent = Input(type="LATENT")
    samples2: Latent = Input(type="LATENT")

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        return (batch_latents(self.samples1, self.samples2),)


def batch_latents(first: Latent, second: Latent,
                  names: tuple[str, str] = ("samples1", "samples2")) -> Latent:
    """``first``'s items then ``second``'s, stretched to ``first``'s size (Latent Batch)."""
    import torch

    from nodes.diffusion.handles import InpaintCondition
    from nodes.diffusion.masking import mask_to_latent

    s1, s2 = _samples(first, names[0]), _samples(second, names[1])
    _plain(first, names[0], "Latent Batch")
    _plain(second, names[1], "Latent Batch")
    (b1, _, h, w), b2 = s1.shape, s2.shape[0]

    def grid_mask(latent: Latent, samples: torch.Tensor, batch: int) -> torch.Tensor:
        if latent.noise_mask is None:
            return samples.new_ones((batch, 1, h, w))
        mask = mask_to_latent(latent.noise_mask, tuple(samples.shape[-2:])).to(s1)
        return _fit(_tile(mask, batch), s1[:, :1], names, repeat=False).clamp(0, 1)

    mask = None
    if first.noise_mask is not None or second.noise_mask is not None:
        mask = torch.cat((grid_mask(first, s1, b1), grid_mask(second, s2, b2)))
    inpaint, a, b = None, first.inpaint, second.inpaint
    if (a is None) != (b is None):
        raise ValueError("only one of the latents carries inpainting inputs (VAE Encode "
                         "for Inpainting): make both the same way")
    if a is not None and b is not None:
        inpaint = InpaintCondition(
            torch.cat((_tile(a.mask, b1), _fit(_tile(b.mask.to(a.mask), b2), a.mask,
                                               names, "nearest-exact", repeat=False))),
            torch.cat((_tile(a.masked_latents, b1),
                       _fit(_tile(b.masked_latents, b2), a.masked_latents, names,
                            repeat=False))))
    samples = torch.cat((s1, _fit(s2, s1, names, repeat=False)))
    index = None  # ComfyUI's: each side's items, as they were in their own batches
    if first.batch_index is not None or second.batch_index is not None:
        index = ((first.batch_index or tuple(range(b1)))
                 + (second.batch_index or tuple(range(b2))))
    return replace(first, samples=samples, noise_mask=mask, inpaint=inpaint,
                   extension_results=(), batch_index=index)


class LatentRotate(Node):
    """Turn latents clockwise by 90, 180 or 270 degrees (a portrait latent becomes a
    landscape one), noise mask included."""

    TYPE = "LatentRotate"
    DISPLAY_NAME = "Rotate Latent"
    CATEGORY = "latent/transform"
    OUTPUTS = (Output("LATENT"),)

    samples: Latent = Input(type="LATENT")
    rotation: str = Input("none", choices=ROTATIONS)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        import torch

        samples = _samples(self.samples, "samples")
        turns = ROTATIONS.index(self.rotation)
        if turns == 0:
            return (self.samples,)
        _plain(self.samples, "samples", "Rotate Latent")

        def turn(value: torch.Tensor) -> torch.Tensor:
            return torch.rot90(value, turns, dims=(-1, -2))  # width towards height: clockwise

        return (_move(self.samples, turn(samples), turn),)


class LatentFlip(Node):
    """Mirror latents: ``x-axis: vertically`` turns them upside down, ``y-axis:
    horizontally`` swaps left and right; noise mask included."""

    TYPE = "LatentFlip"
    DISPLAY_NAME = "Flip Latent"
    CATEGORY = "latent/transform"
    OUTPUTS = (Output("LATENT"),)

    samples: Latent = Input(type="LATENT")
    flip_method: str = Input(FLIPS[0], choices=FLIPS)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        import torch

        samples = _samples(self.samples, "samples")
        _plain(self.samples, "samples", "Flip Latent")
        dim = -2 if self.flip_method == FLIPS[0] else -1

        def flip(value: torch.Tensor) -> torch.Tensor:
            return torch.flip(value, dims=(dim,))

        return (_move(self.samples, flip(samples), flip),)


class LatentCrop(Node):
    """The ``width`` x ``height`` part of latents whose top-left corner is at (x, y), all
    in image pixels (divided by the VAE's downscale: 8 unless the VAE is linked).

    As in ComfyUI, x and y are pulled back so at least 64 px remain right of and below
    them, and a region running past the right or bottom edge is cut there (the result is
    then smaller than asked). The noise mask is cropped along."""

    TYPE = "LatentCrop"
    DISPLAY_NAME = "Crop Latent"
    CATEGORY = "latent/transform"
    OUTPUTS = (Output("LATENT"),)

    samples: Latent = Input(type="LATENT")
    width: int = Input(512, min=64, max=MAX_RESOLUTION, step=8)
    height: int = Input(512, min=64, max=MAX_RESOLUTION, step=8)
    x: int = Input(0, min=0, max=MAX_RESOLUTION, step=8)
    y: int = Input(0, min=0, max=MAX_RESOLUTION, step=8)
    vae: Vae | None = Input(type="VAE", optional=True,
                            description=LATENT_VAE_HELP)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        samples = _samples(self.samples, "samples")
        _plain(self.samples, "samples", "Crop Latent")
        factor = downscale_of(self.samples, self.vae)
        h, w = samples.shape[-2:]
        keep = max(MIN_CROP_PX // factor, 1)
        x = max(min(self.x // factor, w - keep), 0)
        y = max(min(self.y // factor, h - keep), 0)
        x2, y2 = x + self.width // factor, y + self.height // factor

        def cut(value: torch.Tensor) -> torch.Tensor:
            return value[..., y:y2, x:x2].clone()

        return (_move(self.samples, cut(samples), cut, latent_size=True),)


CONCAT_DIMS = ("x", "-x", "y", "-y", "t", "-t")
CUT_DIMS = ("x", "y", "t")


def _spatial_axis(dim: str) -> int:
    if "t" in dim:
        raise ValueError("dim t is the frame axis of video latents; image latents have "
                         "none: use x (width) or y (height)")
    return -1 if "x" in dim else -2


class LatentConcat(Node):
    """Join two latents side by side: ``x`` puts samples2 right of samples1, ``-x`` left
    of it, ``y`` below, ``-y`` above (the sides that meet must be equally long);
    samples2's batch repeats to samples1's. Noise masks join along (a latent without
    one repaints all of its part). Sample the result to outpaint or compose."""

    TYPE = "LatentConcat"
    CATEGORY = "latent/advanced"
    OUTPUTS = (Output("LATENT"),)

    samples1: Latent = Input(type="LATENT")
    samples2: Latent = Input(type="LATENT")
    dim: str = Input("x", choices=CONCAT_DIMS)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        import torch

        from nodes.diffusion.masking import mask_to_latent

        first, second = self.samples1, self.samples2
        s1, s2 = _samples(first, "samples1"), _samples(second, "samples2")
        for latent, name in ((first, "samples1"), (second, "samples2")):
            _plain(latent, name, "LatentConcat")
            if latent.inpaint is not None:
                raise ValueError(f"{name} carries inpainting inputs (VAE Encode for "
                                 f"Inpainting), which cannot be joined; join before encoding")
        axis = _spatial_axis(self.dim)
        other = -2 if axis == -1 else -1
        if s1.shape[1] != s2.shape[1] or s1.shape[other] != s2.shape[other]:
            side = "heights" if axis == -1 else "widths"
            raise ValueError(f"samples1 {tuple(s1.shape[1:])} and samples2 "
                             f"{tuple(s2.shape[1:])} (channels, height, width) must have the "
                             f"same channels and {side} to join along {self.dim}")
        s2 = _tile(s2.to(s1), s1.shape[0])
        order = (lambda a, b: (b, a)) if self.dim.startswith("-") else (lambda a, b: (a, b))

        def grid_mask(latent: Latent, samples: torch.Tensor) -> torch.Tensor:
            if latent.noise_mask is None:
                return samples.new_ones((samples.shape[0], 1, *samples.shape[-2:]))
            mask = mask_to_latent(latent.noise_mask, tuple(samples.shape[-2:])).to(s1)
            return _tile(mask, s1.shape[0])

        mask = None
        if first.noise_mask is not None or second.noise_mask is not None:
            mask = torch.cat(order(grid_mask(first, s1), grid_mask(second, s2)), dim=axis)
        samples = torch.cat(order(s1, s2), dim=axis)
        return (replace(first, samples=samples, noise_mask=mask, extension_results=()),)


class LatentCut(Node):
    """Cut a strip out of latents: ``amount`` latent pixels along ``dim`` (x: columns,
    y: rows) from ``index`` (negative counts from the end), clamped to the latent as in
    ComfyUI. The noise mask is cut along."""

    TYPE = "LatentCut"
    CATEGORY = "latent/advanced"
    OUTPUTS = (Output("LATENT"),)

    samples: Latent = Input(type="LATENT")
    dim: str = Input("x", choices=CUT_DIMS)
    index: int = Input(0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1)
    amount: int = Input(1, min=1, max=MAX_RESOLUTION, step=1)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        samples = _samples(self.samples, "samples")
        _plain(self.samples, "samples", "LatentCut")
        axis = _spatial_axis(self.dim)
        size = samples.shape[axis]
        if self.index >= 0:
            start = min(self.index, size - 1)
            amount = min(size - start, self.amount)
        else:
            start = size + max(self.index, -size)
            amount = min(-max(self.index, -size), self.amount)

        def cut(value: torch.Tensor) -> torch.Tensor:
            return value.narrow(axis, start, amount).clone()

        return (_move(self.samples, cut(samples), cut, latent_size=True),)


class LatentBlend(Node):
    """``samples1 * blend_factor + samples2 * (1 - blend_factor)``: 1 keeps samples1,
    0 gives samples2. ``samples2`` is stretched (bicubic) to samples1's size."""

    TYPE = "LatentBlend"
    DISPLAY_NAME = "Latent Blend"
    CATEGORY = "latent/advanced"
    OUTPUTS = (Output("LATENT"),)

    samples1: Latent = Input(type="LATENT")
    samples2: Latent = Input(type="LATENT")
    blend_factor: float = Input(0.5, min=0.0, max=1.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        f = self.blend_factor
        return _arith(self.samples1, self.samples2, lambda a, b: a * f + b * (1 - f),
                      "bicubic")


class LatentAdd(Node):
    """``samples1 + samples2`` (samples2 stretched to samples1's size, its batch repeated)."""

    TYPE = "LatentAdd"
    DISPLAY_NAME = "Latent Add"
    CATEGORY = "latent/advanced"
    OUTPUTS = (Output("LATENT"),)

    samples1: Latent = Input(type="LATENT")
    samples2: Latent = Input(type="LATENT")

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        return _arith(self.samples1, self.samples2, lambda a, b: a + b)


class LatentSubtract(Node):
    """``samples1 - samples2`` (samples2 stretched to samples1's size, its batch
    repeated): e.g. the difference between two latents, to add elsewhere."""

    TYPE = "LatentSubtract"
    DISPLAY_NAME = "Latent Subtract"
    CATEGORY = "latent/advanced"
    OUTPUTS = (Output("LATENT"),)

    samples1: Latent = Input(type="LATENT")
    samples2: Latent = Input(type="LATENT")

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        return _arith(self.samples1, self.samples2, lambda a, b: a - b)


class LatentMultiply(Node):
    """Every latent value times ``multiplier`` (below 1 flattens, negative inverts)."""

    TYPE = "LatentMultiply"
    DISPLAY_NAME = "Latent Multiply"
    CATEGORY = "latent/advanced"
    OUTPUTS = (Output("LATENT"),)

    samples: Latent = Input(type="LATENT")
    multiplier: float = Input(1.0, min=-10.0, max=10.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        samples = _samples(self.samples, "samples")
        return (replace(self.samples, samples=samples * self.multiplier,
                        extension_results=()),)


class LatentInterpolate(Node):
    """Mix two latents pixel by pixel, ``ratio`` of samples1 (1: samples1, 0: samples2),
    treating each pixel's channels as a vector: the directions are mixed and the result
    rescaled to the mixed lengths, so a 50 % mix is not washed out as a plain average
    is. Zero vectors count as length 0. samples2 is stretched to samples1's size."""

    TYPE = "LatentInterpolate"
    DISPLAY_NAME = "Latent Interpolate"
    CATEGORY = "latent/advanced"
    OUTPUTS = (Output("LATENT"),)

    samples1: Latent = Input(type="LATENT")
    samples2: Latent = Input(type="LATENT")
    ratio: float = Input(1.0, min=0.0, max=1.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        import torch

        r = self.ratio

        def unit(v: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
            return torch.nan_to_num(v / length)  # 0/0 (a zero vector) -> 0

        def mix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            len_a = torch.linalg.vector_norm(a, dim=1, keepdim=True)
            len_b = torch.linalg.vector_norm(b, dim=1, keepdim=True)
            direction = unit(a, len_a) * r + unit(b, len_b) * (1 - r)
            direction = unit(direction, torch.linalg.vector_norm(direction, dim=1,
                                                                 keepdim=True))
            return direction * (len_a * r + len_b * (1 - r))

        return _arith(self.samples1, self.samples2, mix)


NODE_CLASSES = (LatentFromBatch, LatentBatch, LatentBatchSeedBehavior, LatentRotate,
                LatentFlip, LatentCrop, LatentConcat, LatentCut, LatentBlend, LatentAdd,
                LatentSubtract, LatentMultiply, LatentInterpolate)
