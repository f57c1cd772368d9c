"""A shape the shapes world never draws — the heart — for teaching a new word ("sks").

Rendered in the world's style (``training.shapes``): the same colours with jitter, the
3x3 positions with centre jitter, small / large sizes, ±10° rotation, 4x supersampled
anti-aliasing, over the same plain and textured backgrounds. The heart's outline is
centred on its area centroid, so a mask's centroid is its placement centre, as the
world's shapes are; its scale makes a "large" heart about as big as a "large" circle.

The judge (``training.judge``) knows only the world's shapes; :func:`classify_new`
adds the heart's template IoU (same area and centroid, the judge's rotations) and calls
a blob a heart when that IoU reaches :data:`IOU_THRESHOLD` and beats every known shape's
template. Why a heart and not a hexagon: at 64x64 a regular hexagon's mask overlaps a
circle's by IoU ≈ 0.9, inside the spread of generated circles, so no template could tell
them apart; the heart's notch and point overlap every known template by at most ≈ 0.78
(see :data:`IOU_THRESHOLD`; ``tests/test_new_shapes.py`` checks both sides).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from training import judge
from training.shapes import (
    BACKGROUNDS,
    CELL_CENTERS,
    COLORS,
    POSITION_PHRASES,
    POSITIONS,
    SIZE_RADII,
    SIZES,
    SUPERSAMPLE,
    ShapeSpec,
    render_background,
)

NEW_SHAPE = "heart"
WORD = "sks"  # the rare word LoRA captions use where a shape name goes
# Rendered hearts overlap their template by IoU >= 0.92 (300 jittered, rotated, small and
# large, at 64x64); the world's rendered shapes overlap the heart template by at most 0.78
# (600: circle 0.78, square 0.77, diamond 0.75, cross 0.70, star 0.65, triangle 0.61). 0.80
# sits between, leaving generated hearts (softer edges) a margin of 0.12 below a render.
IOU_THRESHOLD = 0.80
_JITTER, _SIZE_JITTER, _MAX_ROTATION, _COLOR_JITTER = 0.025, 0.08, 10.0, 12  # as shapes.py
_ROTATIONS = (-10.0, -5.0, 0.0, 5.0, 10.0)  # as the judge's templates
_SCALE = 1.05  # area ≈ 2.0 (radius·side)², amid the world's shapes (triangle 1.7 .. circle 2.6)


def _heart_outline(n: int = 96) -> list[tuple[float, float]]:
    """The classic parametric heart (y up), centred on its area centroid, max radius 1."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    # Shoelace centroid of the polygon.
    xs, ys = np.roll(x, -1), np.roll(y, -1)
    cross = x * ys - xs * y
    area = cross.sum() / 2
    cx, cy = ((x + xs) * cross).sum() / (6 * area), ((y + ys) * cross).sum() / (6 * area)
    x, y = x - cx, y - cy
    r = np.hypot(x, y).max()
    return [(float(a / r), float(b / r)) for a, b in zip(x, y, strict=True)]


OUTLINE = _heart_outline()


def heart_coverage(center: tuple[float, float], radius: float, rotation: float, size: int,
                   supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Anti-aliased coverage ``[size, size]`` float32 0..1 of a heart (fractions of side),
    drawn as ``training.shapes.shape_coverage`` draws the world's polygons."""
    big = size * supersample
    canvas = Image.new("L", (big, big), 0)
    cx, cy, r = center[0] * big, center[1] * big, radius * big * _SCALE
    a = math.radians(rotation)
    cos, sin = math.cos(a), math.sin(a)
    pts = [(cx + r * (x * cos - y * sin), cy - r * (x * sin + y * cos)) for x, y in OUTLINE]
    ImageDraw.Draw(canvas).polygon(pts, fill=255)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def heart_mask(center: tuple[float, float], radius: float, rotation: float, size: int
               ) -> np.ndarray:
    """Binary mask: pixels at least half covered."""
    return heart_coverage(center, radius, rotation, size) >= 0.5


@dataclass(frozen=True)
class NewShapeSample:
    """One image ``[H, W, 3]`` uint8 of the new shape, its spec, caption and mask."""

    image: np.ndarray
    spec: ShapeSpec
    background: str
    caption: str
    mask: np.ndarray


def caption(spec: ShapeSpec, background: str | None, word: str = WORD) -> str:
    """The world's full caption with ``word`` where the shape name goes:
    "a large red sks at the top left on a white background"."""
    text = f"a {spec.size} {spec.color} {word} {POSITION_PHRASES[spec.position]}"
    return text if background is None else f"{text} on a {background} background"


def sample_spec(rng: np.random.Generator, color: str | None = None,
                position: str | None = None, size: str | None = None) -> ShapeSpec:
    """A heart with the world's jitter; unset attributes are drawn at random."""
    color = color or list(COLORS)[int(rng.integers(len(COLORS)))]
    position = position or POSITIONS[int(rng.integers(len(POSITIONS)))]
    size = size or SIZES[int(rng.integers(len(SIZES)))]
    idx = POSITIONS.index(position)
    jx, jy = rng.uniform(-_JITTER, _JITTER, size=2)
    radius = SIZE_RADII[size] * (1 + rng.uniform(-_SIZE_JITTER, _SIZE_JITTER))
    rgb = np.clip(np.array(COLORS[color]) + rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, 3),
                  0, 255)
    return ShapeSpec(NEW_SHAPE, color, position, size,
                     (float(CELL_CENTERS[idx % 3] + jx), float(CELL_CENTERS[idx // 3] + jy)),
                     float(radius), float(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION)),
                     (int(rgb[0]), int(rgb[1]), int(rgb[2])))


def render_heart(spec: ShapeSpec, background: str, size: int = 64,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Composite one heart over a world background: (uint8 image, bool mask)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    canvas = render_background(background, size, rng)
    cover = heart_coverage(spec.center, spec.radius, spec.rotation, size)
    canvas = canvas * (1 - cover[..., None]) + np.array(spec.rgb, np.float32) * cover[..., None]
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), cover >= 0.5


def generate_heart(seed: int, index: int, side: int = 64, **attributes: str
                   ) -> NewShapeSample:
    """Heart ``index`` of stream ``seed`` (deterministic); ``attributes`` may fix
    ``color``, ``position``, ``size`` and ``background``."""
    rng = np.random.default_rng((seed, index, 31))
    background = attributes.pop("background", None) or BACKGROUNDS[
        int(rng.integers(len(BACKGROUNDS)))]
    spec = sample_spec(rng, **attributes)
    image, mask = render_heart(spec, background, side, rng)
    return NewShapeSample(image, spec, background, caption(spec, background), mask)


# The training set: 8 hearts, every colour once, positions and sizes varied, plain and
# textured backgrounds (chosen by hand, so each attribute varies and none is tied to another).
TRAINING_LAYOUT: tuple[tuple[str, str, str, str], ...] = (
    ("red", "center", "large", "white"),
    ("blue", "top left", "small", "gray"),
    ("green", "bottom right", "large", "beige"),
    ("yellow", "left", "small", "slate"),
    ("purple", "top right", "large", "striped"),
    ("orange", "bottom", "small", "black"),
    ("cyan", "top", "large", "noisy"),
    ("pink", "right", "large", "white"),
)
TRAINING_SEED = 16  # the number


def training_set(side: int = 64) -> list[NewShapeSample]:
    """The 8 training hearts (what workflows/assets/sks_heart_*.png hold)."""
    return [generate_heart(TRAINING_SEED, i, side, color=c, position=p, size=s, background=b)
            for i, (c, p, s, b) in enumerate(TRAINING_LAYOUT)]


# --- judging ------------------------------------------------------------------------------

@cache
def _unit_area() -> float:
    """Heart mask area at radius 1/4 of a 256 image, in units of (radius·side)²."""
    side, radius = 256, 0.25
    return float(heart_mask((0.5, 0.5), radius, 0.0, side).sum()) / (radius * side) ** 2


def heart_iou(mask: np.ndarray) -> float:
    """Best IoU of ``mask`` with a heart template of the same area and centroid."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0.0
    center = ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
    radius = math.sqrt(float(mask.sum()) / _unit_area()) / w
    return max(judge.mask_iou(heart_mask(center, radius, rot, w), mask) for rot in _ROTATIONS)


@dataclass(frozen=True)
class NewShapeVerdict:
    """How the main blob of an image reads: the heart's IoU against the best known shape's."""

    found: bool
    color: str
    heart_iou: float
    known_shape: str
    known_iou: float

    @property
    def is_new_shape(self) -> bool:
        return (self.found and self.heart_iou >= IOU_THRESHOLD
                and self.heart_iou > self.known_iou)

    @property
    def shape(self) -> str:
        """"heart", the known shape the judge reads, or "nothing"."""
        if not self.found:
            return "nothing"
        return NEW_SHAPE if self.is_new_shape else self.known_shape

    def matches(self, color: str) -> bool:
        """A heart in ``color``."""
        return self.is_new_shape and self.color == color


def classify_new(image: np.ndarray) -> NewShapeVerdict:
    """Read the largest saturated blob of a uint8 ``[H, W, 3]`` image."""
    found = judge.detect(image, max_objects=1)
    if not found:
        return NewShapeVerdict(False, "", 0.0, "nothing", 0.0)
    d = found[0]
    return NewShapeVerdict(True, d.color, heart_iou(d.mask), d.shape, d.shape_iou)


def summarise(verdicts: Sequence[NewShapeVerdict], colors: Sequence[str]) -> dict[str, float]:
    """Rates over images asked for a heart in ``colors``: heart in the colour, heart, colour."""
    n = len(verdicts)
    if n == 0:
        return {"n": 0}
    return {"n": n,
            "match": sum(v.matches(c) for v, c in zip(verdicts, colors, strict=True)) / n,
            "heart": sum(v.is_new_shape for v in verdicts) / n,
            "color": sum(v.color == c for v, c in zip(verdicts, colors, strict=True)) / n}


PRIOR_IMAGES = 8  # what the example workflows train on beside the hearts


def prior_set(n: int = PRIOR_IMAGES, side: int = 64) -> list[tuple[np.ndarray, str]]:
    """``n`` single-shape images of the base model's own training world (seed 0) with
    their full captions: trained beside the hearts, they keep the known words' meaning
    (DreamBooth's prior preservation, here with the world's images instead of the
    model's samples)."""
    from training.shapes import generate

    return [(s.image, s.caption) for s in (generate(0, i, side, 0.0) for i in range(n))]


def training_files(n_prior: int = PRIOR_IMAGES) -> list[tuple[str, np.ndarray, str]]:
    """``(file name, image, caption)``: ``sks_heart_<i>.png`` then ``sks_prior_<i>.png``."""
    hearts = [(f"sks_heart_{i}.png", s.image, s.caption) for i, s in enumerate(training_set())]
    prior = [(f"sks_prior_{i}.png", img, cap) for i, (img, cap) in enumerate(prior_set(n_prior))]
    return hearts + prior


def training_masks(n_prior: int = PRIOR_IMAGES) -> list[tuple[str, np.ndarray]]:
    """``(file name, mask)`` of each of :func:`training_files`' images, in their order:
    ``sks_heart_<i>_mask.png`` / ``sks_prior_<i>_mask.png``, the shapes white on black
    (a masked loss's subject)."""
    from training.shapes import generate

    hearts = [s.mask for s in training_set()]
    prior = [generate(0, i, 64, 0.0).mask for i in range(n_prior)]
    return ([(f"sks_heart_{i}_mask.png", (m * 255).astype(np.uint8)) for i, m in enumerate(hearts)]
            + [(f"sks_prior_{i}_mask.png", (m * 255).astype(np.uint8))
               for i, m in enumerate(prior)])


if __name__ == "__main__":
    # python -m training.new_shapes  → workflows/assets/sks_*.png (and their *_mask.png, the
    # masked loss's subjects); prints name and caption
    assets = Path(__file__).resolve().parents[1] / "workflows" / "assets"
    for name, image, text in training_files():
        Image.fromarray(image).save(assets / name, optimize=True)
        print(name, text)
    for name, mask in training_masks():
        Image.fromarray(mask).save(assets / name, optimize=True)
