"""Analytic judge for shapes-world images: no learned model, only pixels and templates.

Backgrounds are grey and shape colors saturated, so foreground = chroma above a
threshold. Each connected foreground blob is read as (color: nearest named color
of its median pixel, shape: best IoU against rendered templates of the same area
and centroid, position: the 3x3 cell of its centroid, size: its area against the
small/large midpoint).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import ndimage

from training.shapes import COLORS, POSITIONS, SHAPES, SIZE_RADII, ShapeSpec, shape_mask

CHROMA_THRESHOLD = 80  # uint8 max-min; backgrounds stay below 45, shape colors above 130
MIN_AREA_FRACTION = 0.004  # blobs smaller than this (16 px at 64x64) are noise
_ROTATIONS = (-10.0, -5.0, 0.0, 5.0, 10.0)
_PALETTE = np.array(list(COLORS.values()), np.float32)


@dataclass(frozen=True)
class Detection:
    """One foreground blob as the judge reads it."""

    color: str
    shape: str
    position: str
    size: str
    shape_iou: float  # IoU with the best template
    area: int
    mask: np.ndarray

    def matches(self, spec: ShapeSpec) -> dict[str, bool]:
        return {"color": self.color == spec.color, "shape": self.shape == spec.shape,
                "position": self.position == spec.position, "size": self.size == spec.size}


def foreground(image: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: saturated pixels (uint8 ``[H, W, 3]`` image)."""
    img = image.astype(np.int16)
    return (img.max(axis=2) - img.min(axis=2)) >= CHROMA_THRESHOLD


def blobs(mask: np.ndarray, min_area: int | None = None) -> list[np.ndarray]:
    """8-connected components of ``mask``, largest first, noise-sized ones dropped."""
    if min_area is None:
        min_area = max(1, round(MIN_AREA_FRACTION * mask.size))
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    areas = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    order = [int(i) + 1 for i in np.argsort(-areas, kind="stable") if areas[i] >= min_area]
    return [labels == i for i in order]


def shape_pixels(image: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: the foreground blobs the judge reads as shapes (noise-sized specks
    dropped), i.e. "the generated shapes" of a uint8 ``[H, W, 3]`` image."""
    mask = foreground(image)
    found = blobs(mask)
    return np.any(found, axis=0) if found else np.zeros_like(mask)


def background_luminance(image: np.ndarray) -> float:
    """Mean luma (0..255) of the pixels well away from any saturated shape."""
    away = ~ndimage.binary_dilation(foreground(image), iterations=2)
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return float(luma[away].mean()) if away.any() else float(luma.mean())


def nearest_color(rgb: np.ndarray) -> str:
    """Name of the palette color nearest (RGB distance) to one ``[3]`` color."""
    dist = np.linalg.norm(_PALETTE - np.asarray(rgb, np.float32)[None], axis=1)
    return list(COLORS)[int(np.argmin(dist))]


def _core_color(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Median color of the blob's more saturated half: edge pixels blend with the background."""
    pixels = image[mask].astype(np.float32)
    chroma = pixels.max(axis=1) - pixels.min(axis=1)
    return np.median(pixels[chroma >= np.median(chroma)], axis=0)


def position_of(mask: np.ndarray) -> str:
    """The 3x3 cell name of the mask's centroid."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    col = min(2, int(xs.mean() + 0.5) * 3 // w)
    row = min(2, int(ys.mean() + 0.5) * 3 // h)
    return POSITIONS[row * 3 + col]


@cache
def _unit_area(shape: str) -> float:
    """Mask area of ``shape`` at radius 1/4 of a 256 image, in units of (radius·side)²."""
    size, radius = 256, 0.25
    return float(shape_mask(shape, (0.5, 0.5), radius, 0.0, size).sum()) / (radius * size) ** 2


def size_of(mask: np.ndarray, shape: str) -> str:
    """small or large: the blob's area against the geometric mean of the two sizes."""
    side = mask.shape[0]
    threshold = _unit_area(shape) * side**2 * SIZE_RADII["small"] * SIZE_RADII["large"]
    return "large" if mask.sum() > threshold else "small"


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """The shape whose template (same area and centroid, small rotations) overlaps best."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    # Pixel centres sit at +0.5 in the renderer's continuous coordinates.
    center = ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
    area = float(mask.sum())
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        radius = math.sqrt(area / _unit_area(shape)) / w
        for rot in (0.0,) if shape == "circle" else _ROTATIONS:
            tmpl = shape_mask(shape, center, radius, rot, w)
            inter = np.logical_and(tmpl, mask).sum()
            iou = inter / max(1, np.logical_or(tmpl, mask).sum())
            if iou > best_iou:
                best, best_iou = shape, float(iou)
    return best, best_iou


def detect(image: np.ndarray, max_objects: int = 2) -> list[Detection]:
    """Read up to ``max_objects`` shapes (largest blobs) from a uint8 ``[H, W, 3]`` image."""
    out = []
    for mask in blobs(foreground(image))[:max_objects]:
        color = nearest_color(_core_color(image, mask))
        shape, iou = classify_shape(mask)
        out.append(Detection(color, shape, position_of(mask), size_of(mask, shape), iou,
                             int(mask.sum()), mask))
    return out


def score_single(image: np.ndarray, spec: ShapeSpec) -> dict[str, bool]:
    """Per-attribute correctness of the main (largest) shape against its spec."""
    found = detect(image, max_objects=1)
    if not found:
        return {"color": False, "shape": False, "position": False, "size": False}
    return found[0].matches(spec)


def score_multi(image: np.ndarray, specs: Sequence[ShapeSpec]) -> bool:
    """Every prompted shape found with the right color, shape and position (any order)."""
    found = detect(image, max_objects=len(specs))
    want = sorted((s.color, s.shape, s.position) for s in specs)
    return sorted((d.color, d.shape, d.position) for d in found) == want


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)
