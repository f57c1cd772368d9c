"""Fitting, stitching, morphology and alpha compositing: ComfyUI's Scale Image to Max
Dimension, Resize And Pad Image, Stitch Images, ImageMorphology (node id ``Morphology``),
Split / Join Image with Alpha and Porter-Duff Image Composite (its node ids, inputs,
defaults, choices and bounds).

An IMAGE is a float ``[B, H, W, C]`` in 0..1 with C = 1, 3 or 4; a MASK ``[B, H, W]``
(``[H, W]`` is taken as a batch of one). ComfyUI's alpha masks are ``1 - alpha``
(1 = transparent), except in Porter-Duff Image Composite, whose masks are the alphas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine import ExecutionContext, Input, Node, Output
from nodes.conditioning import MAX_RESOLUTION
from nodes.diffusion.handles import Tensor
from nodes.image_ops import match_channels
from nodes.limits import FLOAT32, check_fits, check_image
from nodes.mask_ops import common_batch
from nodes.masks import as_mask3d

if TYPE_CHECKING:
    import torch

SCALE_METHODS = ("area", "lanczos", "bilinear", "nearest-exact", "bicubic")
PAD_METHODS = ("area", "bicubic", "nearest-exact", "bilinear", "lanczos")
DIRECTIONS = ("right", "down", "left", "up")
SPACING_COLORS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "red": (1.0, 0.0, 0.0),
                  "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}
MORPHOLOGY = ("erode", "dilate", "open", "close", "gradient", "bottom_hat", "top_hat")
PORTER_DUFF = ("ADD", "CLEAR", "DARKEN", "DST", "DST_ATOP", "DST_IN", "DST_OUT", "DST_OVER",
               "LIGHTEN", "MULTIPLY", "OVERLAY", "SCREEN", "SRC", "SRC_ATOP", "SRC_IN",
               "SRC_OUT", "SRC_OVER", "XOR")


def resize(image: torch.Tensor, width: int, height: int, method: str,
           crop: str = "disabled") -> torch.Tensor:
    """An IMAGE ``[B, H, W, C]`` resized to ``width`` x ``height`` (sides of at least 1
    and at most MAX_RESOLUTION; the result and its channels-first copy must fit)."""
    from nodes.diffusion.resize import common_upscale

    if not (1 <= width <= MAX_RESOLUTION and 1 <= height <= MAX_RESOLUTION):
        raise ValueError(f"cannot resize to {width}x{height} px: each side must be 1 to "
                         f"{MAX_RESOLUTION}")
    batch, channels = image.shape[0], image.shape[-1]
    check_fits(2 * batch * height * width * channels * FLOAT32, image.device,
               f"resizing {batch} image(s) to {width}x{height} px",
               "use a smaller size or a smaller batch")
    if image.shape[1:3] == (height, width) and crop == "disabled":
        return image
    return common_upscale(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


def max_filter(x: torch.Tensor, size: int, erode: bool = False) -> torch.Tensor:
    """Grey dilation (or, with ``erode``, erosion) of ``[N, C, H, W]`` by a flat square of
    ``size`` pixels, centred at ``size // 2`` (as kornia for even sizes). Pixels outside
    the image are ignored (kornia's default "geodesic" border): an edge is neither
    grown from black nor eaten by it. Two 1-D max passes (a square is separable)."""
    import torch.nn.functional as F

    lo, hi = size // 2, size - 1 - size // 2
    y = -x if erode else x
    y = F.max_pool2d(F.pad(y, (lo, hi, 0, 0), value=float("-inf")), (1, size), stride=1)
    y = F.max_pool2d(F.pad(y, (0, 0, lo, hi), value=float("-inf")), (size, 1), stride=1)
    return -y if erode else y


def morphology(x: torch.Tensor, operation: str, size: int) -> torch.Tensor:
    """One of :data:`MORPHOLOGY` on ``[N, C, H, W]``: open = dilate(erode), close =
    erode(dilate), gradient = dilate - erode, top_hat = x - open, bottom_hat = close - x."""
    if operation == "erode":
        return max_filter(x, size, erode=True)
    if operation == "dilate":
        return max_filter(x, size)
    if operation == "open":
        return max_filter(max_filter(x, size, erode=True), size)
    if operation == "close":
        return max_filter(max_filter(x, size), size, erode=True)
    if operation == "gradient":
        return max_filter(x, size) - max_filter(x, size, erode=True)
    if operation == "top_hat":
        return x - morphology(x, "open", size)
    if operation == "bottom_hat":
        return morphology(x, "close", size) - x
    raise ValueError(f"unknown operation {operation!r}: use one of {', '.join(MORPHOLOGY)}")


def porter_duff(src: torch.Tensor, sa: torch.Tensor, dst: torch.Tensor, da: torch.Tensor,
                mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(colour, alpha) of ``src`` with alpha ``sa`` composited with ``dst`` / ``da`` by
    one of :data:`PORTER_DUFF`, the colours taken as premultiplied; ComfyUI's formulas
    (its DARKEN, LIGHTEN and OVERLAY included, which differ from the W3C's)."""
    import torch

    union = sa + da - sa * da
    table = {
        "ADD": lambda: ((src + dst).clamp(0, 1), (sa + da).clamp(0, 1)),
        "CLEAR": lambda: (torch.zeros_like(dst), torch.zeros_like(da)),
        "DARKEN": lambda: ((1 - da) * src + (1 - sa) * dst + torch.minimum(src, dst), union),
        "DST": lambda: (dst, da),
        "DST_ATOP": lambda: (sa * dst + (1 - da) * src, sa),
        "DST_IN": lambda: (dst * sa, sa * da),
        "DST_OUT": lambda: ((1 - sa) * dst, (1 - sa) * da),
        "DST_OVER": lambda: (dst + (1 - da) * src, da + (1 - da) * sa),
        "LIGHTEN": lambda: ((1 - da) * src + (1 - sa) * dst + torch.maximum(src, dst), union),
        "MULTIPLY": lambda: (src * dst, sa * da),
        "OVERLAY": lambda: (torch.where(2 * dst < da, 2 * src * dst,
                                        sa * da - 2 * (da - src) * (sa - dst)), union),
        "SCREEN": lambda: (src + dst - src * dst, union),
        "SRC": lambda: (src, sa),
        "SRC_ATOP": lambda: (da * src + (1 - sa) * dst, da),
        "SRC_IN": lambda: (src * da, sa * da),
        "SRC_OUT": lambda: ((1 - da) * src, (1 - da) * sa),
        "SRC_OVER": lambda: (src + (1 - sa) * dst, sa + (1 - sa) * da),
        "XOR": lambda: ((1 - da) * src + (1 - sa) * dst, (1 - da) * sa + (1 - sa) * da),
    }
    if mode not in table:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(PORTER_DUFF)}")
    return table[mode]()


def _mask(mask: torch.Tensor, what: str) -> torch.Tensor:
    try:
        mask = as_mask3d(mask)
    except ValueError as exc:
        raise ValueError(f"the {what} must be a MASK [B, H, W]: {exc}") from None
    if 0 in mask.shape:
        raise ValueError(f"the {what} is empty (shape {tuple(mask.shape)})")
    return mask


def _resize_mask(mask: torch.Tensor, height: int, width: int, method: str,
                 crop: str = "disabled") -> torch.Tensor:
    """``[B, H, W]`` resized as a one-channel IMAGE, clamped to 0..1."""
    return resize(mask[..., None], width, height, method, crop)[..., 0].clamp(0, 1)


def _expand(x: torch.Tensor, batch: int) -> torch.Tensor:
    return x if x.shape[0] == batch else x.expand(batch, *x.shape[1:])


class ImageScaleToMaxDimension(Node):
    """Resize so the longer side is ``largest_size`` pixels, keeping the aspect ratio
    (the shorter side rounded, at least 1 px). Unlike ComfyUI, ``largest_size`` 0 is an
    error, and its duplicated "bilinear" choice is listed once."""

    TYPE = "ImageScaleToMaxDimension"
    DISPLAY_NAME = "Scale Image to Max Dimension"
    CATEGORY = "image/upscaling"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    upscale_method: str = Input("area", choices=SCALE_METHODS)
    largest_size: int = Input(512, min=0, max=MAX_RESOLUTION, step=1)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        check_image(self.image, "image")
        if self.largest_size < 1:
            raise ValueError("largest_size 0 leaves no pixels: give the longer side's size")
        height, width = self.image.shape[1:3]
        size = self.largest_size
        if height > width:
            width, height = max(1, round(width / height * size)), size
        elif width > height:
            width, height = size, max(1, round(height / width * size))
        else:
            width = height = size
        return (resize(self.image, width, height, self.upscale_method),)


class ResizeAndPadImage(Node):
    """Fit the image inside ``target_width`` x ``target_height`` keeping its aspect ratio,
    centred on a white or black background (every channel, alpha included, is filled
    with 1 or 0). Sides are truncated to whole pixels, as in ComfyUI."""

    TYPE = "ResizeAndPadImage"
    DISPLAY_NAME = "Resize And Pad Image"
    CATEGORY = "image/transform"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    target_width: int = Input(512, min=1, max=MAX_RESOLUTION, step=1)
    target_height: int = Input(512, min=1, max=MAX_RESOLUTION, step=1)
    padding_color: str = Input("white", choices=("white", "black"))
    interpolation: str = Input("area", choices=PAD_METHODS)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        import torch

        check_image(self.image, "image")
        batch, height, width, channels = self.image.shape
        tw, th = self.target_width, self.target_height
        scale = min(tw / width, th / height)
        new_w, new_h = max(1, min(tw, int(width * scale))), max(1, min(th, int(height * scale)))
        check_fits(batch * th * tw * channels * FLOAT32, self.image.device,
                   f"{batch} padded image(s) of {tw}x{th} px", "use a smaller target size")
        fitted = resize(self.image, new_w, new_h, self.interpolation)
        out = torch.full((batch, th, tw, channels), 1.0 if self.padding_color == "white" else 0.0,
                         dtype=self.image.dtype, device=self.image.device)
        y, x = (th - new_h) // 2, (tw - new_w) // 2
        out[:, y:y + new_h, x:x + new_w] = fitted.to(out.dtype)
        return (out,)


class ImageStitch(Node):
    """Put ``image2`` to the right of, below, left of or above ``image1`` (without
    image2, image1 is returned). ``match_image_size`` resizes image2 (lanczos, aspect
    kept) to image1's height (left/right) or width (up/down); otherwise the smaller one
    is centred on white or black padding (``spacing_color`` white, else black). A gap
    of ``spacing_width`` pixels (rounded up to even) in ``spacing_color`` goes between.
    A shorter batch repeats its last image, as in ComfyUI. Channels are matched as in
    Blend Images (grey repeated as RGB, a missing alpha opaque; ComfyUI pads grey with
    ones instead)."""

    TYPE = "ImageStitch"
    DISPLAY_NAME = "Stitch Images"
    CATEGORY = "image/transform"
    OUTPUTS = (Output("IMAGE"),)

    image1: Tensor = Input(type="IMAGE")
    direction: str = Input("right", choices=DIRECTIONS)
    match_image_size: bool = Input(True)
    spacing_width: int = Input(0, min=0, max=1024, step=2)
    spacing_color: str = Input("white", choices=tuple(SPACING_COLORS))
    image2: Tensor | None = Input(type="IMAGE", optional=True)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        import torch
        import torch.nn.functional as F

        check_image(self.image1, "image1")
        if self.image2 is None:
            return (self.image1,)
        check_image(self.image2, "image2")
        a, b = self.image1, self.image2.to(self.image1.device, self.image1.dtype)
        across = self.direction in ("left", "right")
        (h1, w1), (h2, w2) = a.shape[1:3], b.shape[1:3]
        if self.match_image_size:  # image2's new size; resized once the result is known to fit
            aspect = w2 / h2
            h2, w2 = (h1, max(1, int(h1 * aspect))) if across else (max(1, int(w1 / aspect)), w1)
        batch, channels = max(a.shape[0], b.shape[0]), max(a.shape[-1], b.shape[-1])
        rows = max(h1, h2) if across else h1 + h2
        cols = w1 + w2 if across else max(w1, w2)
        gap = self.spacing_width + self.spacing_width % 2
        rows, cols = (rows, cols + gap) if across else (rows + gap, cols)
        if rows > MAX_RESOLUTION or cols > MAX_RESOLUTION:
            raise ValueError(f"the stitched image would be {cols}x{rows} px, past the maximum "
                             f"{MAX_RESOLUTION}: use smaller images or spacing")
        check_fits(2 * batch * rows * cols * channels * FLOAT32, a.device,
                   f"stitching {batch} image(s) of {cols}x{rows} px", "use smaller images")
        if self.match_image_size:
            b = resize(b, w2, h2, "lanczos")
        pad = {"white": 1.0, "black": 0.0}.get(self.spacing_color, 0.0)
        parts = []
        for image in (a, b):
            image = torch.cat([image, image[-1:].expand(batch - image.shape[0],
                                                        *image.shape[1:])])
            short = (rows if across else cols) - image.shape[1 if across else 2]
            if short:
                sides = (0, 0, 0, 0, short // 2, short - short // 2) if across \
                    else (0, 0, short // 2, short - short // 2)
                image = F.pad(image, sides, value=pad)
            parts.append(match_channels(image, channels))
        if gap:
            color = torch.tensor((*SPACING_COLORS[self.spacing_color], 1.0)[:channels])
            size = (batch, rows, gap) if across else (batch, gap, cols)
            parts.insert(1, color.to(a.device, a.dtype).expand(*size, channels))
        if self.direction in ("left", "up"):
            parts.reverse()
        return (torch.cat(parts, dim=2 if across else 1),)


class Morphology(Node):
    """Grey morphology with a ``kernel_size`` square, per channel (alpha too):
    ``erode`` shrinks bright areas, ``dilate`` grows them, ``open`` removes bright specks,
    ``close`` fills dark holes, ``gradient`` (dilate - erode) outlines edges, ``top_hat``
    (image - open) keeps small bright details, ``bottom_hat`` (close - image) small dark
    ones. Pixels outside the image are ignored at the edges, as kornia's default in
    ComfyUI; an even size is centred at ``size // 2``, as kornia's."""

    TYPE = "Morphology"
    DISPLAY_NAME = "ImageMorphology"
    CATEGORY = "image/postprocessing"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    operation: str = Input("erode", choices=MORPHOLOGY)
    kernel_size: int = Input(3, min=3, max=999, step=1)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        check_image(self.image, "image")
        batch, height, width, channels = self.image.shape
        size = self.kernel_size
        check_fits(4 * batch * channels * (height + size) * (width + size) * FLOAT32,
                   self.image.device, f"{self.operation} on {batch} image(s) of "
                   f"{width}x{height} px", "use a smaller batch, image or kernel_size")
        x = self.image.movedim(-1, 1).float()
        return (morphology(x, self.operation, size).movedim(1, -1).to(self.image.dtype),)


class SplitImageWithAlpha(Node):
    """Split an RGBA image into its RGB colours and a mask of ``1 - alpha`` (1 where
    transparent). Without alpha the mask is 0 everywhere; grey becomes RGB (ComfyUI
    passes one channel through)."""

    TYPE = "SplitImageWithAlpha"
    DISPLAY_NAME = "Split Image with Alpha"
    CATEGORY = "mask/compositing"
    OUTPUTS = (Output("IMAGE"), Output("MASK"))

    image: Tensor = Input(type="IMAGE")

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        check_image(self.image, "image")
        rgb = match_channels(self.image[..., :3], 3).clone()
        if self.image.shape[-1] == 4:
            return (rgb, 1.0 - self.image[..., 3])
        return (rgb, torch.zeros_like(self.image[..., 0]))


class JoinImageWithAlpha(Node):
    """Add an alpha channel to an image: alpha = ``1 - alpha`` mask (the mask's 1 is
    transparent, as Split Image with Alpha gives it), resized bilinearly to the image.
    An existing alpha is replaced. Batches of 1 are repeated to the other's size;
    others must match (ComfyUI cuts both to the smaller)."""

    TYPE = "JoinImageWithAlpha"
    DISPLAY_NAME = "Join Image with Alpha"
    CATEGORY = "mask/compositing"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    alpha: Tensor = Input(type="MASK")

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        import torch

        check_image(self.image, "image")
        mask = _mask(self.alpha, "alpha").to(self.image.device, self.image.dtype)
        batch = common_batch({"image": self.image.shape[0], "alpha": mask.shape[0]})
        height, width = self.image.shape[1:3]
        if mask.shape[1:] != (height, width):
            mask = _resize_mask(mask, height, width, "bilinear")
        check_fits(batch * height * width * 4 * FLOAT32, self.image.device,
                   f"{batch} RGBA image(s) of {width}x{height} px", "use a smaller batch")
        rgb = _expand(match_channels(self.image[..., :3], 3), batch)
        return (torch.cat([rgb, (1.0 - _expand(mask, batch))[..., None]], dim=-1),)


class PorterDuffImageComposite(Node):
    """Composite ``source`` with ``destination`` by a Porter-Duff ``mode`` (``SRC_OVER``:
    source on top; ``DST_IN``: destination cut to the source's shape; ...). The alpha
    inputs and the MASK output are alphas (1 = opaque, not ComfyUI's usual inverted
    mask), and the colours are taken as premultiplied by them. Everything is resized
    (bicubic, centre-cropped) to the destination's size; the images need the same
    channel count. Batches of 1 are repeated to the others' size."""

    TYPE = "PorterDuffImageComposite"
    DISPLAY_NAME = "Porter-Duff Image Composite"
    CATEGORY = "mask/compositing"
    OUTPUTS = (Output("IMAGE"), Output("MASK"))

    source: Tensor = Input(type="IMAGE")
    source_alpha: Tensor = Input(type="MASK")
    destination: Tensor = Input(type="IMAGE")
    destination_alpha: Tensor = Input(type="MASK")
    mode: str = Input("DST", choices=PORTER_DUFF)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor, torch.Tensor]:
        check_image(self.source, "source")
        check_image(self.destination, "destination")
        dst = self.destination
        src = self.source.to(dst.device, dst.dtype)
        if src.shape[-1] != dst.shape[-1]:
            raise ValueError(f"the source has {src.shape[-1]} channel(s) but the destination "
                             f"{dst.shape[-1]}: give both the same (RGB, RGBA or grey)")
        sa = _mask(self.source_alpha, "source_alpha").to(dst.device, dst.dtype)
        da = _mask(self.destination_alpha, "destination_alpha").to(dst.device, dst.dtype)
        batch = common_batch({"source": src.shape[0], "source_alpha": sa.shape[0],
                              "destination": dst.shape[0], "destination_alpha": da.shape[0]})
        height, width, channels = dst.shape[1:]
        check_fits(4 * batch * height * width * (channels + 1) * FLOAT32, dst.device,
                   f"compositing {batch} image(s) of {width}x{height} px",
                   "use a smaller batch or destination")
        if src.shape[1:3] != (height, width):
            src = resize(src, width, height, "bicubic", "center")
        if sa.shape[1:] != (height, width):
            sa = _resize_mask(sa, height, width, "bicubic", "center")
        if da.shape[1:] != (height, width):
            da = _resize_mask(da, height, width, "bicubic", "center")
        image, alpha = porter_duff(_expand(src, batch), _expand(sa, batch)[..., None],
                                   _expand(dst, batch), _expand(da, batch)[..., None], self.mode)
        return (image.expand(batch, height, width, channels).contiguous(),
                alpha[..., 0].expand(batch, height, width).contiguous())


NODE_CLASSES = (ImageScaleToMaxDimension, ResizeAndPadImage, ImageStitch, Morphology,
                SplitImageWithAlpha, JoinImageWithAlpha, PorterDuffImageComposite)
