"""Seam metric for tiled generation (MultiDiffusion panoramas): does the image step where
a window ends?

A panorama made of windows can show a seam where a window ends: the background's shade or
texture changes abruptly there, down the whole column. Per image:

* ``g(x)`` — the column step: the median over rows of ``|I[y, x+1] − I[y, x]|`` (mean over
  colour channels, uint8 levels). The median makes it a property of the whole column: a
  shape edge crossing the column on a few rows does not move it, a seam does.
* border columns ``B`` — the ``x`` where ``x + 1`` is the left or right edge of a window
  (inside the image);
* control columns ``C`` — the other ``x`` where ``x + 1`` is a multiple of ``grid``, the
  image's coarsest grid in pixels (the VAE's downscale x the UNet's downsampling: 4 x 4 =
  16 on steerflow-shapes; half that when every grid column is a border). Borders sit on
  that grid too, so decoder and texture grid artifacts touch both sets alike.

``seam_excess`` = max over ``B`` of ``g(b)`` − median of ``g(C)``: how far the strongest
border column steps above a typical grid column of the same image. An image *shows a
seam* when its excess passes :data:`SEAM_LEVELS`. ``seam_ratio`` (pooled over images) =
mean ``g`` over borders / mean ``g`` over controls: 1 when borders are like any other
grid column.

Calibrate on images that cannot have window seams (the same sampler without windows,
read at the same columns) and on ones that do (independent windows side by side: stride
= window).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

#: a step of 3 levels (1.2% of the range) down most of a column: about the just-noticeable
#: luminance step (Weber fraction 1-2%) on the flat backgrounds of the shapes world; images
#: made without windows stay under it at the same columns (README)
SEAM_LEVELS = 3.0
#: steerflow-shapes' coarsest grid: VAE downscale 4 x UNet downsampling 4 (pixels)
SHAPES_GRID = 16


def column_gradients(image: np.ndarray) -> np.ndarray:
    """``[W - 1]``: the median over rows of ``|I[y, x+1] − I[y, x]|`` (mean over channels)
    of a uint8 image ``[H, W, 3]``."""
    img = image.astype(np.float32)
    return np.median(np.abs(np.diff(img, axis=1)).mean(axis=2), axis=0)


def border_columns(width: int, edges: Iterable[int]) -> list[int]:
    """Gradient indices ``x`` whose ``x + 1`` is a window edge strictly inside the image
    (pixel columns; wrapped edges are taken modulo the width)."""
    return sorted({e % width - 1 for e in edges if 0 < e % width < width})


def window_edges(views: Sequence[tuple[int, int, int, int]], downscale: int) -> list[int]:
    """The pixel columns where the windows ``views`` (latent pixels, as
    :func:`nodes.diffusion.multidiffusion.get_views` gives) start and end."""
    return sorted({v * downscale for view in views for v in view[2:]})


def control_columns(width: int, grid: int, borders: Iterable[int]) -> list[int]:
    """Gradient indices on the ``grid`` (pixels) that are not borders."""
    skip = set(borders)
    return [x for x in range(grid - 1, width - 1, grid) if x not in skip]


@dataclass(frozen=True)
class SeamReading:
    """One image's border and control gradients."""

    border: np.ndarray  # g at the border columns
    control: np.ndarray  # g at the control (grid) columns

    @property
    def excess(self) -> float:
        """The strongest border column above the image's median control column."""
        return float(self.border.max() - np.median(self.control)) if len(self.border) else 0.0

    @property
    def shows_seam(self) -> bool:
        return self.excess > SEAM_LEVELS


def read_seams(image: np.ndarray, edges: Iterable[int], grid: int = SHAPES_GRID
               ) -> SeamReading:
    """The seam reading of one uint8 image ``[H, W, 3]`` for window ``edges`` (pixels)."""
    width = image.shape[1]
    g = column_gradients(image)
    borders = border_columns(width, edges)
    controls = control_columns(width, grid, borders)
    while not controls and grid > 1:  # every grid column is a border: a finer grid
        grid //= 2
        controls = control_columns(width, grid, borders)
    return SeamReading(g[borders], g[controls])


def seam_ratio(readings: Sequence[SeamReading]) -> float:
    """Mean border gradient over mean control gradient, pooled over images."""
    border = np.concatenate([r.border for r in readings])
    control = np.concatenate([r.control for r in readings])
    return float(border.mean() / max(control.mean(), 1e-6))


def summary(readings: Sequence[SeamReading]) -> dict[str, float]:
    """Pooled ratio, the share of images showing a seam, and the excess's median and 90th
    percentile (levels)."""
    excess = np.array([r.excess for r in readings])
    return {"ratio": seam_ratio(readings),
            "seam_rate": float(np.mean([r.shows_seam for r in readings])),
            "excess_median": float(np.median(excess)),
            "excess_p90": float(np.quantile(excess, 0.9)),
            "n": float(len(readings))}
