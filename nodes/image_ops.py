"""Editing images: ComfyUI's Invert, Blend, Blur, Sharpen and Quantize Image, Crop,
Flip and Rotate Image, Repeat Image Batch, Get Image from Batch, Get Image Size and the
RGB ⇄ YUV conversions (its node ids, inputs, widget order and bounds).

An IMAGE is a float tensor ``[B, H, W, C]`` in 0..1 with C = 3 (RGB), 4 (RGBA) or 1
(grey). The filters keep the image's device, dtype and channel count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine import ExecutionContext, Input, Node, Output
from nodes.conditioning import MAX_RESOLUTION
from nodes.diffusion.handles import Tensor
from nodes.limits import FLOAT32, check_fits, check_image
from nodes.mask_ops import common_batch

if TYPE_CHECKING:
    import numpy as np
    import torch

BLEND_MODES = ("normal", "multiply", "screen", "overlay", "soft_light", "difference")
DITHERS = ("none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16")
FLIPS = ("x-axis: vertically", "y-axis: horizontally")
ROTATIONS = ("none", "90 degrees", "180 degrees", "270 degrees")
MAX_BATCH = 4096

# YCbCr as kornia's rgb_to_ycbcr / ycbcr_to_rgb compute it (ComfyUI's YUV nodes use them):
# BT.601 luma weights, full range, chroma centred on 0.5, kornia's rounded constants.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
CB_SCALE, CR_SCALE = 0.564, 0.713  # (B - Y)·0.564, (R - Y)·0.713
R_FROM_CR, G_FROM_CR, G_FROM_CB, B_FROM_CB = 1.403, 0.714, 0.344, 1.773


def blend(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    """``a`` (the base) and ``b`` (the layer on top) combined by one of
    :data:`BLEND_MODES`, per channel, unclamped. ``difference`` is ``a - b`` as in
    ComfyUI (not its absolute value: clamping later turns negatives into black)."""
    import torch

    if mode == "normal":
        return b
    if mode == "multiply":
        return a * b
    if mode == "screen":
        return 1 - (1 - a) * (1 - b)
    if mode == "overlay":
        return torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))
    if mode == "soft_light":  # the W3C formula
        lift = torch.where(a <= 0.25, ((16 * a - 12) * a + 4) * a, a.clamp(min=0).sqrt())
        return torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (lift - a))
    if mode == "difference":
        return a - b
    raise ValueError(f"unknown blend_mode {mode!r}: use one of {', '.join(BLEND_MODES)}")


def match_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """``image`` with ``channels`` channels: extra ones dropped, grey repeated as RGB,
    a missing alpha set to 1 (opaque)."""
    import torch

    if image.shape[-1] == 1 and channels > 1:
        image = image.expand(*image.shape[:-1], 3)
    if image.shape[-1] > channels:
        return image[..., :channels]
    if image.shape[-1] < channels:
        return torch.cat([image, torch.ones_like(image[..., :1])], dim=-1)
    return image


def gaussian_blur(image: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """Gaussian blur of an IMAGE with a ``2·radius + 1`` kernel whose ``sigma`` is in
    units of ``radius`` (ComfyUI's: the kernel spans -1..1), the edges mirrored. Done as
    two 1-D passes (the 2-D Gaussian is their product)."""
    import torch
    import torch.nn.functional as F

    height, width, channels = image.shape[1:]
    x = image.movedim(-1, 1).float()
    x = x.index_select(2, mirror(height, radius, x.device))
    x = x.index_select(3, mirror(width, radius, x.device))
    offsets = torch.linspace(-1, 1, 2 * radius + 1, device=x.device)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return x.movedim(1, -1).to(image.dtype)


def mirror(size: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-``size`` axis padded by ``pad`` on each side by reflection
    (the edge pixel not repeated, as torch's ``reflect``), for any ``pad``: torch's
    refuses one of the axis' length or more."""
    import torch

    index = torch.arange(-pad, size + pad, device=device)
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index.abs() % period
    return torch.where(index >= size, period - index, index)


def _check_filter_fits(image: torch.Tensor, radius: int, what: str) -> None:
    """The padded copy, the pass between and the result must fit."""
    batch, height, width, channels = image.shape
    padded = batch * channels * (height + 2 * radius) * (width + 2 * radius)
    check_fits(3 * padded * FLOAT32, image.device, f"{what} {batch} image(s) of "
               f"{width}x{height} px", "use a smaller batch or image")


def bayer_matrix(order: int) -> list[list[float]]:
    """The ``order`` x ``order`` ordered-dither thresholds (a power of 2), in -0.5..0.5."""
    index = [[0]]
    while len(index) < order:
        n = len(index)
        index = [[4 * index[y % n][x % n] + (0, 2, 3, 1)[2 * (y // n) + x // n]
                  for x in range(2 * n)] for y in range(2 * n)]
    cells = order * order
    return [[(v + 0.5) / cells - 0.5 for v in row] for row in index]


def quantize_rgb(pixels: np.ndarray, colors: int, dither: str) -> np.ndarray:
    """An ``[H, W, 3]`` uint8 array reduced to at most ``colors`` colours (Pillow's
    median cut), mapped to the nearest with ``dither``: ``none``, ``floyd-steinberg``
    (error diffusion) or ``bayer-N`` (an N x N ordered pattern)."""
    import numpy as np
    from PIL import Image

    if dither not in DITHERS:
        raise ValueError(f"unknown dither {dither!r}: use one of {', '.join(DITHERS)}")
    image = Image.fromarray(pixels)
    palette = image.quantize(colors=colors)
    if dither.startswith("bayer-"):  # shift each pixel by its cell's threshold first
        order = int(dither.split("-")[1])
        spread = 2 * 256 / (len(palette.getpalette() or []) // 3 or colors)
        pattern = np.asarray(bayer_matrix(order), dtype=np.float32) * spread + 0.5
        h, w = pixels.shape[:2]
        tiled = np.tile(pattern, (-(-h // order), -(-w // order)))[:h, :w, None]
        image = Image.fromarray(np.clip(pixels + tiled, 0, 255).astype(np.uint8))
    method = Image.Dither.FLOYDSTEINBERG if dither == "floyd-steinberg" else Image.Dither.NONE
    return np.asarray(image.quantize(palette=palette, dither=method).convert("RGB"))


def rgb_to_yuv(rgb: torch.Tensor) -> torch.Tensor:
    """``[..., 3]`` RGB in 0..1 → ``[..., 3]`` Y, U (Cb), V (Cr); U and V are 0.5 on greys."""
    import torch

    r, g, b = rgb.unbind(-1)
    y = LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b
    return torch.stack((y, (b - y) * CB_SCALE + 0.5, (r - y) * CR_SCALE + 0.5), dim=-1)


def yuv_to_rgb(yuv: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`rgb_to_yuv` (to kornia's rounding, about 2e-4), unclamped."""
    import torch

    y, u, v = yuv.unbind(-1)
    u, v = u - 0.5, v - 0.5
    return torch.stack((y + R_FROM_CR * v, y - G_FROM_CR * v - G_FROM_CB * u,
                        y + B_FROM_CB * u), dim=-1)


class ImageInvert(Node):
    """The negative of an image: each colour channel becomes 1 - value. An alpha
    channel is kept (ComfyUI inverts it too, turning opaque into transparent)."""

    TYPE = "ImageInvert"
    DISPLAY_NAME = "Invert Image"
    CATEGORY = "image"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        check_image(self.image, "image")
        out = 1.0 - self.image
        if self.image.shape[-1] == 4:
            out[..., 3] = self.image[..., 3]
        return (out,)


class ImageBlend(Node):
    """Lay ``image2`` over ``image1`` with a blend mode, mixed in by ``blend_factor``
    (0 = image1 only, 1 = the full effect); the result is clamped to 0..1.

    Modes: ``normal`` (image2), ``multiply`` (darkens), ``screen`` (lightens),
    ``overlay``, ``soft_light``, ``difference`` (image1 - image2, negatives black).
    An image2 of another size is stretched (bicubic, centre-cropped to the aspect
    ratio) to image1's; its channels are matched to image1's and image1's alpha is
    kept. Batches must be equal or one of them 1."""

    TYPE = "ImageBlend"
    DISPLAY_NAME = "Blend Images"
    CATEGORY = "image/filters"
    OUTPUTS = (Output("IMAGE"),)

    image1: Tensor = Input(type="IMAGE")
    image2: Tensor = Input(type="IMAGE")
    blend_factor: float = Input(0.5, min=0.0, max=1.0, step=0.01)
    blend_mode: str = Input("normal", choices=BLEND_MODES)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        from nodes.diffusion.concat import match_batch
        from nodes.diffusion.resize import common_upscale

        check_image(self.image1, "image1")
        check_image(self.image2, "image2")
        a = self.image1
        b = match_channels(self.image2.to(a.device), a.shape[-1]).to(a.dtype)
        batch = common_batch({"image1": a.shape[0], "image2": b.shape[0]})
        check_fits(3 * batch * a[0].numel() * FLOAT32, a.device,
                   f"blending {batch} image(s) of {a.shape[2]}x{a.shape[1]} px",
                   "use a smaller batch or image")
        if b.shape[1:3] != a.shape[1:3]:
            b = common_upscale(b.movedim(-1, 1), a.shape[2], a.shape[1], "bicubic",
                               "center").movedim(1, -1)
        a = match_batch(a, batch, "image1", "image2")
        b = match_batch(b, batch, "image2", "image1")
        out = a * (1 - self.blend_factor) + blend(a, b, self.blend_mode) * self.blend_factor
        out = out.clamp(0, 1)
        if out.shape[-1] == 4:
            out[..., 3] = a[..., 3]
        return (out,)


class ImageBlur(Node):
    """Gaussian blur. ``blur_radius`` sets the kernel (2·radius + 1 pixels a side),
    ``sigma`` its spread relative to the radius (ComfyUI's: the blur in pixels is about
    radius x sigma). The edges are mirrored. Alpha is blurred too."""

    TYPE = "ImageBlur"
    DISPLAY_NAME = "Blur Image"
    CATEGORY = "image/filters"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    blur_radius: int = Input(1, min=1, max=31, step=1)
    sigma: float = Input(1.0, min=0.1, max=10.0, step=0.1)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        check_image(self.image, "image")
        _check_filter_fits(self.image, self.blur_radius, "blurring")
        return (gaussian_blur(self.image, self.blur_radius, self.sigma),)


class ImageSharpen(Node):
    """Unsharp masking: adds ``10·alpha`` times the difference between the image and
    its Gaussian blur (``sharpen_radius`` and ``sigma`` as in Blur Image), clamped to
    0..1. Flat areas stay as they are; alpha 0 leaves the image unchanged."""

    TYPE = "ImageSharpen"
    DISPLAY_NAME = "Sharpen Image"
    CATEGORY = "image/filters"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    sharpen_radius: int = Input(1, min=1, max=31, step=1)
    sigma: float = Input(1.0, min=0.1, max=10.0, step=0.01)
    alpha: float = Input(1.0, min=0.0, max=5.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        check_image(self.image, "image")
        _check_filter_fits(self.image, self.sharpen_radius, "sharpening")
        blurred = gaussian_blur(self.image, self.sharpen_radius, self.sigma)
        amount = 10 * self.alpha
        return (((1 + amount) * self.image - amount * blurred).clamp(0, 1),)


class ImageQuantize(Node):
    """Reduce each image to at most ``colors`` colours (a palette chosen per image by
    median cut), each pixel replaced by the nearest; ``dither`` trades flat bands for
    noise (``floyd-steinberg``) or a regular pattern (``bayer-N``). Alpha is kept; a
    grey image stays grey."""

    TYPE = "ImageQuantize"
    DISPLAY_NAME = "Quantize Image"
    CATEGORY = "image/filters"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    colors: int = Input(256, min=1, max=256, step=1)
    dither: str = Input("none", choices=DITHERS)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        import torch

        check_image(self.image, "image")
        image = self.image
        rgb = match_channels(image[..., :3], 3)
        levels = (rgb.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        out = torch.stack([torch.from_numpy(quantize_rgb(frame, self.colors, self.dither).copy())
                           for frame in levels]).to(image.device, image.dtype) / 255
        if image.shape[-1] == 1:
            out = out.mean(dim=-1, keepdim=True)
        elif image.shape[-1] == 4:
            out = torch.cat([out, image[..., 3:]], dim=-1)
        return (out,)


class ImageCrop(Node):
    """The ``width`` x ``height`` part of an image whose top-left corner is at (x, y).
    As in ComfyUI, a corner past the image is moved onto its last row or column, and a
    region running past the right or bottom edge is cut there (the result is smaller
    than asked). ComfyUI marks it deprecated in favour of Crop Image (ImageCropV2), which
    takes the region as one bounding box."""

    TYPE = "ImageCrop"
    DISPLAY_NAME = "Crop Image (DEPRECATED)"
    DEPRECATED = True
    CATEGORY = "image/transform"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    width: int = Input(512, min=1, max=MAX_RESOLUTION, step=1)
    height: int = Input(512, min=1, max=MAX_RESOLUTION, step=1)
    x: int = Input(0, min=0, max=MAX_RESOLUTION, step=1)
    y: int = Input(0, min=0, max=MAX_RESOLUTION, step=1)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        check_image(self.image, "image")
        height, width = self.image.shape[1:3]
        x, y = min(self.x, width - 1), min(self.y, height - 1)
        return (self.image[:, y:y + self.height, x:x + self.width].clone(),)


class ImageFlip(Node):
    """Mirror images: ``x-axis: vertically`` turns them upside down,
    ``y-axis: horizontally`` swaps left and right."""

    TYPE = "ImageFlip"
    DISPLAY_NAME = "Flip Image"
    CATEGORY = "image/transform"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    flip_method: str = Input(FLIPS[0], choices=FLIPS)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        check_image(self.image, "image")
        return (self.image.flip(1 if self.flip_method == FLIPS[0] else 2),)


class ImageRotate(Node):
    """Turn images clockwise by a quarter, half or three quarters of a turn (90 and
    270 swap width and height)."""

    TYPE = "ImageRotate"
    DISPLAY_NAME = "Rotate Image"
    CATEGORY = "image/transform"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    rotation: str = Input("none", choices=ROTATIONS)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        import torch

        check_image(self.image, "image")
        turns = ROTATIONS.index(self.rotation)
        return (torch.rot90(self.image, k=turns, dims=(2, 1)).contiguous(),)


class RepeatImageBatch(Node):
    """The whole batch repeated ``amount`` times one after another (a, b, a, b, ...)."""

    TYPE = "RepeatImageBatch"
    DISPLAY_NAME = "Repeat Image Batch"
    CATEGORY = "image/batch"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    amount: int = Input(1, min=1, max=MAX_BATCH)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        check_image(self.image, "image")
        check_fits(self.amount * self.image.numel() * FLOAT32, self.image.device,
                   f"{self.amount * self.image.shape[0]} images of "
                   f"{self.image.shape[2]}x{self.image.shape[1]} px", "lower amount")
        return (self.image.repeat(self.amount, 1, 1, 1),)


class ImageFromBatch(Node):
    """``length`` images of a batch starting at ``batch_index`` (0 is the first; a
    negative index counts from the end, -1 the last). As in ComfyUI, an index past
    either end picks the first or last image, and ``length`` stops at the batch's end."""

    TYPE = "ImageFromBatch"
    DISPLAY_NAME = "Get Image from Batch"
    CATEGORY = "image/batch"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    batch_index: int = Input(0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION)
    length: int = Input(1, min=1, max=MAX_BATCH)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        check_image(self.image, "image")
        batch = self.image.shape[0]
        start = self.batch_index + batch if self.batch_index < 0 else self.batch_index
        start = max(0, min(batch - 1, start))
        return (self.image[start:start + self.length].clone(),)


class GetImageSize(Node):
    """The width, height and batch size of an image, as numbers for other nodes."""

    TYPE = "GetImageSize"
    DISPLAY_NAME = "Get Image Size"
    CATEGORY = "image"
    OUTPUTS = (Output("INT", "width"), Output("INT", "height"), Output("INT", "batch_size"))

    image: Tensor = Input(type="IMAGE")

    def execute(self, ctx: ExecutionContext) -> tuple[int, int, int]:
        check_image(self.image, "image")
        batch, height, width = self.image.shape[:3]
        return (int(width), int(height), int(batch))


class ImageAddNoise(Node):
    """Add seeded Gaussian noise to images (clamped to 0..1), ComfyUI's node: e.g. to give
    img2img a grainier start or test a model's robustness. The noise is drawn on the CPU
    from ``seed``, so it is the same on any device."""

    TYPE = "ImageAddNoise"
    DISPLAY_NAME = "Image Add Noise"
    CATEGORY = "image"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    seed: int = Input(0, min=0, max=2**64 - 1, control_after_generate=True,
                      description="Seeds the noise")
    strength: float = Input(0.5, min=0.0, max=1.0, step=0.01,
                            description="Standard deviation of the noise")

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        import torch

        check_image(self.image, "image")
        check_fits(2 * self.image.numel() * FLOAT32, self.image.device,
                   f"noise for {self.image.shape[0]} image(s)", "use a smaller batch or image")
        generator = torch.Generator("cpu").manual_seed(self.seed)
        noise = torch.randn(tuple(self.image.shape), generator=generator)
        noisy = self.image.float() + self.strength * noise.to(self.image.device)
        return (noisy.clamp(0, 1).to(self.image.dtype),)


class ImageRGBToYUV(Node):
    """Split an image into its Y (brightness), U (blue-difference) and V (red-difference)
    channels, each as a grey image (BT.601 YCbCr in 0..1, U and V 0.5 where there is no
    colour), to edit brightness and colour apart; Image YUV to RGB joins them back.

    An alpha channel is left out; a one-channel image is read as grey."""

    TYPE = "ImageRGBToYUV"
    DISPLAY_NAME = "Image RGB to YUV"
    CATEGORY = "image/color"
    OUTPUTS = (Output("IMAGE", "Y"), Output("IMAGE", "U"), Output("IMAGE", "V"))

    image: Tensor = Input(type="IMAGE")

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor, ...]:
        check_image(self.image, "image")
        check_fits(4 * self.image[..., :1].numel() * 3 * FLOAT32, self.image.device,
                   f"the Y, U and V of {self.image.shape[0]} image(s)",
                   "use a smaller batch or image")
        rgb = self.image[..., :3].float()
        if rgb.shape[-1] == 1:
            rgb = rgb.expand(*rgb.shape[:-1], 3)
        yuv = rgb_to_yuv(rgb).to(self.image.dtype)
        return tuple(yuv[..., k:k + 1].expand(*yuv.shape[:-1], 3).contiguous()
                     for k in range(3))


class ImageYUVToRGB(Node):
    """Join Y, U and V images (as Image RGB to YUV makes them) back into an RGB image.

    Each input is read as grey (the mean of its colour channels); the result is clamped
    to 0..1 (edited U and V can leave the RGB range)."""

    TYPE = "ImageYUVToRGB"
    DISPLAY_NAME = "Image YUV to RGB"
    CATEGORY = "image/color"
    OUTPUTS = (Output("IMAGE"),)

    Y: Tensor = Input(type="IMAGE")
    U: Tensor = Input(type="IMAGE")
    V: Tensor = Input(type="IMAGE")

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        import torch

        planes = {"Y": self.Y, "U": self.U, "V": self.V}
        for name, plane in planes.items():
            check_image(plane, name)
        shapes = {name: tuple(plane.shape[:3]) for name, plane in planes.items()}
        if len(set(shapes.values())) > 1:
            sizes = ", ".join(f"{name} {b}x{w}x{h}" for name, (b, h, w) in shapes.items())
            raise ValueError(f"Y, U and V must have the same batch size, width and height "
                             f"(batch x width x height: {sizes})")
        yuv = torch.stack([plane[..., :3].float().mean(dim=-1) for plane in planes.values()],
                          dim=-1)
        return (yuv_to_rgb(yuv).clamp(0, 1).to(self.Y.dtype),)


NODE_CLASSES = (ImageInvert, ImageBlend, ImageBlur, ImageSharpen, ImageQuantize, ImageCrop,
                ImageFlip, ImageRotate, RepeatImageBatch, ImageFromBatch, GetImageSize,
                ImageAddNoise, ImageRGBToYUV, ImageYUVToRGB)
