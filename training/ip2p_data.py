"""Instruct-Pix2Pix triplets from the shapes world: (before image, instruction, after image).

The before image is sample ``index`` of the world with ``seed`` (``shapes.generate``);
one edit is planned from ``(seed, index)`` alone, and the after image is the same
render with only what the instruction names changed: the same background texture, the
same rotation, jitter and size of every shape. Four kinds of edit:

- ``recolour``: "make the circle blue" (a colour no shape of the image has; the colour
  jitter is kept);
- ``shape``: "turn the square into a star" (rotation and size kept);
- ``move``: "move it to the left": one cell on the 3x3 grid, left/right/up/down, where
  that cell exists and keeps two shapes two cells apart (the world's rule, so they
  never touch); the jitter inside the cell is kept;
- ``background``: "make the background black" (any other background).

In a two-shape image the edited shape is named by colour and kind ("the red circle");
in a one-shape image by kind, colour and kind, "the shape", or "it" (moves). The
phrasing is drawn from a separate stream with a ``variant`` (e.g. the training epoch),
so the same edit is worded several ways; everything is deterministic in
``(seed, index, variant)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from training.shapes import (
    BACKGROUNDS,
    CELL_CENTERS,
    COLORS,
    POSITIONS,
    SHAPES,
    ShapeSpec,
    ShapesSample,
    generate,
    render,
    sample_layout,
)

EDIT_KINDS: tuple[str, ...] = ("recolour", "shape", "move", "background")
TWO_SHAPE_PROB = 0.3  # the world's default
# grid step (column, row) of each direction
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1),
                                          "down": (0, 1)}
_DIRECTION_WORDS = {"left": ("left", "to the left"), "right": ("right", "to the right"),
                    "up": ("up", "upwards"), "down": ("down", "downwards")}
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "recolour": ("make {t} {v}", "turn {t} {v}", "color {t} {v}", "paint {t} {v}",
                 "change the color of {t} to {v}"),
    "shape": ("turn {t} into a {v}", "make {t} a {v}", "replace {t} with a {v}",
              "change {t} into a {v}"),
    "move": ("move {t} {v}", "shift {t} {v}", "move {t} one step {v}"),
    "background": ("make the background {v}", "change the background to {v}",
                   "turn the background {v}", "give it a {v} background",
                   "put it on a {v} background"),
}


@dataclass(frozen=True)
class EditPlan:
    """One planned edit of sample ``index`` of world ``seed`` (no pixels yet)."""

    seed: int
    index: int
    kind: str
    shapes: tuple[ShapeSpec, ...]  # before
    background: str  # before
    after_shapes: tuple[ShapeSpec, ...]
    after_background: str
    target: int  # the edited shape's index; -1 for a background edit
    value: str  # the new colour / shape / direction / background
    two_shape_prob: float = TWO_SHAPE_PROB  # the world's, to render the same layout

    @property
    def edited(self) -> ShapeSpec | None:
        return self.after_shapes[self.target] if self.target >= 0 else None


@dataclass(frozen=True)
class Triplet:
    """A before image, an instruction and the after image (uint8 ``[H, W, 3]``)."""

    plan: EditPlan
    instruction: str
    before: ShapesSample
    after: np.ndarray
    after_masks: np.ndarray  # [n_shapes, H, W] bool

    @property
    def kind(self) -> str:
        return self.plan.kind


def _cell(position: str) -> tuple[int, int]:
    idx = POSITIONS.index(position)
    return idx % 3, idx // 3


def move_targets(shapes: tuple[ShapeSpec, ...], target: int) -> list[str]:
    """Directions that keep shape ``target`` on the grid and two cells from the others."""
    col, row = _cell(shapes[target].position)
    others = [_cell(s.position) for k, s in enumerate(shapes) if k != target]
    out = []
    for name, (dc, dr) in DIRECTIONS.items():
        c, r = col + dc, row + dr
        if 0 <= c < 3 and 0 <= r < 3 and all(max(abs(c - oc), abs(r - orow)) >= 2
                                               for oc, orow in others):
            out.append(name)
    return out


def moved(spec: ShapeSpec, direction: str) -> ShapeSpec:
    """``spec`` one cell towards ``direction``, its jitter inside the cell kept."""
    dc, dr = DIRECTIONS[direction]
    col, row = _cell(spec.position)
    position = POSITIONS[(row + dr) * 3 + col + dc]
    center = (spec.center[0] + CELL_CENTERS[col + dc] - CELL_CENTERS[col],
              spec.center[1] + CELL_CENTERS[row + dr] - CELL_CENTERS[row])
    return replace(spec, position=position, center=center)


def recoloured(spec: ShapeSpec, color: str) -> ShapeSpec:
    """``spec`` in ``color``, with the same per-channel jitter."""
    jitter = np.array(spec.rgb) - np.array(COLORS[spec.color])
    rgb = np.clip(np.array(COLORS[color]) + jitter, 0, 255)
    return replace(spec, color=color, rgb=(int(rgb[0]), int(rgb[1]), int(rgb[2])))


def plan_edit(seed: int, index: int, kind: str | None = None,
              two_shape_prob: float = TWO_SHAPE_PROB) -> EditPlan | None:
    """The edit of sample ``index``: ``kind`` given, or drawn; None when ``kind`` is
    ``move`` and no shape can move. A drawn move that cannot happen becomes a recolour."""
    shapes, background = sample_layout(np.random.default_rng((seed, index)), two_shape_prob)
    rng = np.random.default_rng((seed, index, 23))
    drawn = kind is None
    kind = kind or EDIT_KINDS[int(rng.integers(len(EDIT_KINDS)))]
    if kind not in EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; use one of {EDIT_KINDS}")
    target = int(rng.integers(len(shapes)))
    if kind == "move":
        options = move_targets(shapes, target)
        if not options and len(shapes) == 2:
            target = 1 - target
            options = move_targets(shapes, target)
        if not options:
            if not drawn:
                return None
            kind = "recolour"
    after = list(shapes)
    after_background = background
    if kind == "recolour":
        free = [c for c in COLORS if all(s.color != c for s in shapes)]
        value = free[int(rng.integers(len(free)))]
        after[target] = recoloured(shapes[target], value)
    elif kind == "shape":
        others = [s for s in SHAPES if s != shapes[target].shape]
        value = others[int(rng.integers(len(others)))]
        after[target] = replace(shapes[target], shape=value)
    elif kind == "move":
        value = options[int(rng.integers(len(options)))]
        after[target] = moved(shapes[target], value)
    else:
        others = [b for b in BACKGROUNDS if b != background]
        value = others[int(rng.integers(len(others)))]
        after_background, target = value, -1
    return EditPlan(seed, index, kind, shapes, background, tuple(after), after_background,
                    target, value, two_shape_prob)


def instruction(plan: EditPlan, variant: int = 0) -> str:
    """The plan worded as an instruction; ``variant`` draws another wording."""
    rng = np.random.default_rng((plan.seed, plan.index, 29, variant))
    template = _TEMPLATES[plan.kind][int(rng.integers(len(_TEMPLATES[plan.kind])))]
    if plan.kind == "background":
        return template.format(v=plan.value)
    spec = plan.shapes[plan.target]
    if len(plan.shapes) > 1:
        name = f"the {spec.color} {spec.shape}"
    else:
        names = [f"the {spec.shape}", f"the {spec.color} {spec.shape}", "the shape"]
        if plan.kind == "move":
            names.append("it")
        name = names[int(rng.integers(len(names)))]
    value = plan.value
    if plan.kind == "move":
        words = _DIRECTION_WORDS[value]
        value = words[int(rng.integers(len(words)))]
    return template.format(t=name, v=value)


def render_plan(plan: EditPlan, size: int = 64) -> tuple[ShapesSample, np.ndarray, np.ndarray]:
    """(before sample, after image, after masks): the before image is exactly
    ``generate(seed, index)``; the after image is rendered from the same random state,
    so a textured background comes out the same."""
    before = generate(plan.seed, plan.index, size, plan.two_shape_prob)
    rng = np.random.default_rng((plan.seed, plan.index))
    sample_layout(rng, plan.two_shape_prob)  # the state generate() renders from
    after, masks = render(plan.after_shapes, plan.after_background, size, rng)
    return before, after, masks


def make_triplet(seed: int, index: int, size: int = 64, kind: str | None = None,
                 variant: int = 0, two_shape_prob: float = TWO_SHAPE_PROB) -> Triplet | None:
    """The triplet of ``(seed, index)`` (None when a forced ``kind`` cannot apply)."""
    plan = plan_edit(seed, index, kind, two_shape_prob)
    if plan is None:
        return None
    before, after, masks = render_plan(plan, size)
    return Triplet(plan, instruction(plan, variant), before, after, masks)
