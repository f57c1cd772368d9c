"""GITS: Geometry-Inspired Time Scheduling (Chen et al. 2024, "On the Trajectory Regularity
of ODE-based Diffusion Sampling").

The paper searches, for a model, the noise levels whose steps follow the sampling
trajectory's regular shape best; ComfyUI ships the search's result for SD 1.x as tables of
σs (``nodes/assets/gits_noise_levels.json``, the numbers of ComfyUI's ``nodes_gits.py``):
one table per ``coeff`` (0.80 to 1.50 by 0.05, how strongly the search favours few large
steps at high noise), one row per step count 2 to 20, each row ``steps + 1`` levels from
SD's σ_max (14.6146) to its σ_min (0.0291675).

:func:`gits_sigmas` reads them as ComfyUI's GITSScheduler does: above 20 steps the
20-step row is interpolated linearly in log σ to ``steps + 1`` levels; ``denoise`` < 1
keeps the last ``round(steps · denoise)`` steps; the last level becomes 0.

Importing this module imports neither torch nor numpy.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from nodes.sigma_lists import loglinear_interp

TABLES = Path(__file__).resolve().parents[1] / "assets" / "gits_noise_levels.json"
#: the step counts the tables hold (longer schedules interpolate the 20-step row)
MIN_STEPS, TABLE_STEPS = 2, 20
MAX_STEPS = 1000


@functools.cache
def noise_levels() -> dict[str, tuple[tuple[float, ...], ...]]:
    """coeff (``"0.80"`` ... ``"1.50"``) -> rows of σ for 2 ... 20 steps."""
    with TABLES.open(encoding="utf-8") as f:
        raw = json.load(f)
    return {key: tuple(tuple(float(v) for v in row) for row in rows)
            for key, rows in raw.items()}


def coeff_key(coeff: float) -> str:
    """The table of ``coeff`` (ComfyUI looks it up rounded to 2 decimals), or an error
    that lists the ones there are."""
    key = f"{round(coeff, 2):.2f}"
    tables = noise_levels()
    if key not in tables:
        raise ValueError(f"coeff {coeff:g} has no GITS table: use a multiple of 0.05 from "
                         f"0.80 to 1.50 ({', '.join(tables)})")
    return key


def gits_levels(coeff: float, steps: int) -> list[float]:
    """The ``steps + 1`` noise levels of a whole ``steps``-step GITS schedule, the last
    one the table's σ_min (not yet 0)."""
    if not MIN_STEPS <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be {MIN_STEPS} to {MAX_STEPS}, not {steps}")
    rows = noise_levels()[coeff_key(coeff)]
    if steps <= TABLE_STEPS:
        return list(rows[steps - MIN_STEPS])
    return loglinear_interp(rows[-1], steps + 1)


def gits_sigmas(coeff: float, steps: int, denoise: float) -> tuple[list[float], int]:
    """(levels, start): the whole schedule's ``steps + 1`` levels ending at 0, and the
    first step the window runs: ``steps − round(steps · denoise)`` (``steps``, an empty
    window, at denoise 0)."""
    if not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise must be 0 to 1, not {denoise:g}")
    levels = gits_levels(coeff, steps)
    levels[-1] = 0.0
    keep = steps if denoise >= 1.0 else (0 if denoise <= 0.0 else round(steps * denoise))
    return levels, steps - keep
