"""The "shapes world": seeded, on-the-fly images of colored shapes with captions and masks.

Sample ``i`` of a dataset with seed ``s`` depends only on ``(s, i)``, so any
sample (and any training batch) can be regenerated without storing data or
iterator state. Shape colors are saturated and backgrounds are (near) grey, so
an analytic judge can find the foreground by chroma alone (see ``judge.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")

# Saturated and far apart in RGB (chroma >= 130), none close to a background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 130, 20),
    "yellow": (240, 210, 20),
    "green": (40, 170, 60),
    "cyan": (20, 200, 210),
    "blue": (30, 70, 220),
    "purple": (140, 50, 190),
    "pink": (240, 110, 190),
}

# Plain backgrounds are near grey (chroma <= 45) so they never read as a shape color.
PLAIN_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "beige": (230, 215, 185),
    "slate": (55, 65, 80),
}
TEXTURED_BACKGROUNDS: tuple[str, ...] = ("striped", "noisy")
BACKGROUNDS: tuple[str, ...] = (*PLAIN_BACKGROUNDS, *TEXTURED_BACKGROUNDS)

# Row-major 3x3 grid; the index is row * 3 + column.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
POSITION_PHRASES: dict[str, str] = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
SIZES: tuple[str, ...] = ("small", "large")

# Fractions of the image side; cell centres sit inside the judge's thirds with a margin.
CELL_CENTERS = (0.225, 0.5, 0.775)
# Circumradius as a fraction of the image side; large shapes never leave the image.
SIZE_RADII = {"small": 0.11, "large": 0.16}
_JITTER = 0.025  # centre jitter, fraction of the side
_SIZE_JITTER = 0.08  # relative radius jitter
_MAX_ROTATION = 10.0  # degrees; keeps a square a square and a diamond a diamond
_COLOR_JITTER = 12  # per channel, so a color name covers a small region, not one value
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeSpec:
    """One shape in an image; ``center`` and ``radius`` are fractions of the image side."""

    shape: str
    color: str
    position: str
    size: str
    center: tuple[float, float]  # (x, y)
    radius: float
    rotation: float = 0.0  # degrees, counter-clockwise
    rgb: tuple[int, int, int] = (0, 0, 0)


@dataclass
class ShapesSample:
    """An image ``[H, W, 3]`` uint8, its full caption, the shapes and one mask per shape."""

    image: np.ndarray
    caption: str
    shapes: tuple[ShapeSpec, ...]
    background: str
    masks: np.ndarray = field(repr=False)  # [n_shapes, H, W] bool

    @property
    def mask(self) -> np.ndarray:
        """Union of the shape masks ``[H, W]`` bool (the ControlNet condition)."""
        return self.masks.any(axis=0)


# --- geometry ------------------------------------------------------------------------------

def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * points):
        r = 1.0 if k % 2 == 0 else inner
        a = math.pi / 2 + k * math.pi / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def _regular(n: int, phase: float) -> list[tuple[float, float]]:
    return [(math.cos(phase + 2 * math.pi * k / n), math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


_ARM = 0.36  # half-width of the cross's arms
# Unit outlines (y up), circumradius about 1; their centroid is the origin, so a
# shape's mask centroid is its placement centre.
_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "square": _regular(4, math.pi / 4),
    "diamond": [(0.0, 1.0), (-0.8, 0.0), (0.0, -1.0), (0.8, 0.0)],
    "triangle": _regular(3, math.pi / 2),
    "star": _star(),
    "cross": [(_ARM, 1.0), (-_ARM, 1.0), (-_ARM, _ARM), (-1.0, _ARM), (-1.0, -_ARM),
              (-_ARM, -_ARM), (-_ARM, -1.0), (_ARM, -1.0), (_ARM, -_ARM), (1.0, -_ARM),
              (1.0, _ARM), (_ARM, _ARM)],
}
# Scale per shape so a "large" star looks about as big as a "large" circle.
_SHAPE_SCALE = {"circle": 0.9, "square": 1.0, "diamond": 1.05, "triangle": 1.15,
                "star": 1.15, "cross": 1.0}


def shape_coverage(shape: str, center: tuple[float, float], radius: float,
                   rotation: float, size: int, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Anti-aliased coverage ``[size, size]`` float32 in 0..1 of one shape (fractions of side)."""
    big = size * supersample
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = center[0] * big, center[1] * big
    r = radius * big * _SHAPE_SCALE[shape]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        a = math.radians(rotation)
        cos, sin = math.cos(a), math.sin(a)
        # Image y points down, hence the minus on the rotated y.
        pts = [(cx + r * (x * cos - y * sin), cy - r * (x * sin + y * cos))
               for x, y in _OUTLINES[shape]]
        draw.polygon(pts, fill=255)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def shape_mask(shape: str, center: tuple[float, float], radius: float, rotation: float,
               size: int) -> np.ndarray:
    """Binary mask ``[size, size]``: pixels at least half covered by the shape."""
    return shape_coverage(shape, center, radius, rotation, size) >= 0.5


# --- sampling -------------------------------------------------------------------------------

def _cell_center(position: str) -> tuple[float, float]:
    idx = POSITIONS.index(position)
    return CELL_CENTERS[idx % 3], CELL_CENTERS[idx // 3]


# Ordered cell pairs two rows or two columns apart.
_FAR_PAIRS = [(a, b) for a in range(9) for b in range(9)
              if max(abs(a % 3 - b % 3), abs(a // 3 - b // 3)) == 2]


def _sample_shape(rng: np.random.Generator, color: str, position: str, size: str) -> ShapeSpec:
    cx, cy = _cell_center(position)
    jx, jy = rng.uniform(-_JITTER, _JITTER, size=2)
    radius = SIZE_RADII[size] * (1 + rng.uniform(-_SIZE_JITTER, _SIZE_JITTER))
    rgb = np.clip(np.array(COLORS[color]) + rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, 3),
                  0, 255)
    return ShapeSpec(shape=SHAPES[rng.integers(len(SHAPES))], color=color, position=position,
                     size=size, center=(float(cx + jx), float(cy + jy)), radius=float(radius),
                     rotation=float(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION)),
                     rgb=(int(rgb[0]), int(rgb[1]), int(rgb[2])))


def sample_layout(rng: np.random.Generator, two_shape_prob: float = 0.3
                  ) -> tuple[tuple[ShapeSpec, ...], str]:
    """Random shapes (one, or two that never overlap) and a background name."""
    n = 2 if rng.random() < two_shape_prob else 1
    colors = rng.choice(len(COLORS), size=n, replace=False)
    # Two shapes take cells two apart, so even two large stars never touch.
    pairs = _FAR_PAIRS if n == 2 else [(c,) for c in range(len(POSITIONS))]
    positions = [POSITIONS[c] for c in pairs[int(rng.integers(len(pairs)))]]
    sizes = [SIZES[int(k)] for k in rng.integers(len(SIZES), size=n)]
    names = list(COLORS)
    shapes = tuple(_sample_shape(rng, names[int(c)], p, s)
                   for c, p, s in zip(colors, positions, sizes, strict=True))
    return shapes, BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]


def render_background(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A background ``[size, size, 3]`` float32 in 0..255; textures are grey like plain ones."""
    if name in PLAIN_BACKGROUNDS:
        return np.broadcast_to(np.array(PLAIN_BACKGROUNDS[name], np.float32),
                               (size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if name == "striped":
        period = size / 8
        direction = [(1, 0), (0, 1), (1, 1), (1, -1)][int(rng.integers(4))]
        phase = rng.uniform(0, period)
        band = ((xx * direction[0] + yy * direction[1] + phase) // (period / 2)) % 2
        grey = np.where(band == 0, 235.0, 175.0)
    elif name == "noisy":
        coarse = rng.uniform(80, 190, size=(8, 8)).astype(np.float32)
        # Smooth blotches only: per-pixel noise cannot pass a 4x-8x latent bottleneck.
        grey = np.asarray(Image.fromarray(coarse, mode="F").resize(
            (size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    else:
        raise ValueError(f"unknown background {name!r}")
    return np.repeat(grey[..., None], 3, axis=2).astype(np.float32)


def _shape_phrase(s: ShapeSpec, *, size: bool = True, color: bool = True,
                  shape: bool = True, position: bool = True) -> str:
    words = ["a"]
    if size:
        words.append(s.size)
    if color:
        words.append(s.color)
    words.append(s.shape if shape else "shape")
    if position:
        words.append(POSITION_PHRASES[s.position])
    return " ".join(words)


def full_caption(shapes: Sequence[ShapeSpec], background: str | None, *,
                 color: bool = True) -> str:
    """``"a large red circle at the top left and a small blue square at the bottom right on a
    black background"``: every attribute named (the evaluation prompts); ``color=False``
    leaves the colors out (what a SEGA color concept then adds), ``background=None`` the
    background (what a style LoRA then decides)."""
    text = " and ".join(_shape_phrase(s, color=color) for s in shapes)
    return text if background is None else text + f" on a {background} background"


def training_caption(shapes: Sequence[ShapeSpec], background: str,
                     rng: np.random.Generator) -> str:
    """The full caption with words dropped at random, so short prompts ("a red circle",
    "blue", a SEGA concept) are in-distribution too."""
    r = rng.random()
    if r < 0.5:
        return full_caption(shapes, background)
    if r < 0.6:
        # A bare attribute word, as SEGA concepts and quick prompts use.
        s = shapes[0]
        return [s.color, s.shape, POSITION_PHRASES[s.position], f"{background} background"][
            int(rng.integers(4))]
    keep = rng.random(4) >= np.array([0.5, 0.2, 0.2, 0.3])  # size, color, shape, position
    text = " and ".join(
        _shape_phrase(s, size=bool(keep[0]), color=bool(keep[1]), shape=bool(keep[2]),
                      position=bool(keep[3]))
        for s in shapes)
    if rng.random() >= 0.4:
        text += f" on a {background} background"
    return text


def render(shapes: Sequence[ShapeSpec], background: str, size: int = 64,
           rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Composite the shapes over the background: (image uint8 ``[H, W, 3]``, masks bool)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    canvas = render_background(background, size, rng)
    masks = []
    for s in shapes:
        cover = shape_coverage(s.shape, s.center, s.radius, s.rotation, size)
        canvas = canvas * (1 - cover[..., None]) + np.array(s.rgb, np.float32) * cover[..., None]
        masks.append(cover >= 0.5)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, np.stack(masks) if masks else np.zeros((0, size, size), bool)


def generate(seed: int, index: int, size: int = 64, two_shape_prob: float = 0.3
             ) -> ShapesSample:
    """Sample ``index`` of the world with ``seed`` (deterministic, independent of order)."""
    rng = np.random.default_rng((seed, index))
    shapes, background = sample_layout(rng, two_shape_prob)
    image, masks = render(shapes, background, size, rng)
    return ShapesSample(image, full_caption(shapes, background), shapes, background, masks)


# --- torch ---------------------------------------------------------------------------------

def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` → float ``[3, H, W]`` in -1..1 (what the VAE sees)."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div(127.5).sub(1.0)


class ShapesDataset(torch.utils.data.Dataset):
    """Map-style dataset generated on the fly; ``length`` is nominal (any index works).

    Items: ``pixel_values`` ``[3, H, W]`` in -1..1, ``caption`` (training captions
    with dropped words when ``caption_dropout`` is set, else the full caption),
    ``mask`` ``[1, H, W]`` float (union of the shape masks) and ``index``.
    """

    def __init__(self, seed: int = 0, size: int = 64, length: int = 10**9,
                 two_shape_prob: float = 0.3, random_captions: bool = True):
        self.seed, self.size, self.length = seed, size, length
        self.two_shape_prob, self.random_captions = two_shape_prob, random_captions

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> ShapesSample:
        return generate(self.seed, index, self.size, self.two_shape_prob)

    def caption(self, index: int, variant: int = 0) -> str:
        """The caption of sample ``index`` without rendering it; ``variant`` (e.g. the epoch)
        draws another random wording of the same image."""
        shapes, background = sample_layout(np.random.default_rng((self.seed, index)),
                                           self.two_shape_prob)
        if not self.random_captions:
            return full_caption(shapes, background)
        # Its own stream, so the caption choice never changes the image.
        rng = np.random.default_rng((self.seed, index, 1, variant))
        return training_caption(shapes, background, rng)

    def __getitem__(self, index: int) -> dict[str, object]:
        item = self.sample(index)
        return {"pixel_values": image_to_tensor(item.image), "caption": self.caption(index),
                "mask": torch.from_numpy(item.mask).float()[None], "index": index}

    def batch(self, step: int, batch_size: int) -> dict[str, object]:
        """The batch for training step ``step``: samples ``step*B .. step*B+B-1``."""
        items = [self[step * batch_size + j] for j in range(batch_size)]
        return collate(items)


def collate(items: Sequence[dict[str, object]]) -> dict[str, object]:
    """Stack tensors, list the rest."""
    out: dict[str, object] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
