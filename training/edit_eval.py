"""The "recolour one shape" protocol shared by the real-image editing techniques
(DiffEdit, LEDITS++, ...): one shape of a *generated* image must change colour and
nothing else.

A case is a shapes-world caption (one or two shapes) at seed = its index. The source
image is that caption's txt2img image (``training.evaluate.txt2img_graph``); cases whose
source the judge does not read as prompted are skipped (an edit of a wrong image says
nothing), and drawing goes on until ``n`` usable ones. The first shape of the caption is
recoloured to a colour no shape of the image has; the target prompt is the caption with
that one colour word changed.

Scoring (:func:`score_recolour`):

- ``recoloured``: a shape overlapping the original one (IoU ≥ 0.5) reads as the new colour;
- ``shape_kept``: that shape still reads as the same kind of shape;
- ``others_kept``: every other shape of the source is still there, colour and kind;
- ``psnr_outside``: PSNR between source and edit over the pixels outside the *edit
  region* — the original and the edited shape's pixels, dilated by ``margin`` pixels
  (anti-aliased edges and a shape that grows by a pixel are part of the edit);
- ``ok``: all three kept *and* ``psnr_outside`` ≥ ``PSNR_TARGET``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage

from training import judge
from training.shapes import COLORS, ShapesSample, full_caption, generate

PSNR_TARGET = 30.0  # dB, outside the edit region
SUCCESS_TARGET = 0.80
DEV_SEED = 77  # tune here
HELD_OUT_SEED = 1_000_003  # report here (training.evaluate's world)


@dataclass(frozen=True)
class RecolourCase:
    """One edit: ``source_prompt`` at ``seed`` → ``target_prompt`` (one colour changed)."""

    index: int
    seed: int
    sample: ShapesSample
    source_prompt: str
    target_prompt: str
    old_color: str
    new_color: str

    @property
    def shape(self) -> str:
        return self.sample.shapes[0].shape


@dataclass(frozen=True)
class RecolourScore:
    recoloured: bool
    shape_kept: bool
    others_kept: bool
    psnr_outside: float
    edit_region: np.ndarray  # [H, W] bool

    @property
    def edited(self) -> bool:
        """The shape changed colour, kept its kind, and the other shapes stayed."""
        return self.recoloured and self.shape_kept and self.others_kept

    @property
    def ok(self) -> bool:
        return self.edited and self.psnr_outside >= PSNR_TARGET

    @property
    def verdict(self) -> str:
        """"ok", or the first requirement the edit failed."""
        if self.ok:
            return "ok"
        if not self.recoloured:
            return "not recoloured"
        if not self.shape_kept:
            return "shape changed"
        if not self.others_kept:
            return "other shape changed"
        return f"psnr < {PSNR_TARGET:g}"


def make_case(world_seed: int, index: int, size: int = 64, two_shape_prob: float = 0.5
              ) -> RecolourCase:
    """The case of ``index`` in world ``world_seed`` (deterministic)."""
    sample = generate(world_seed, index, size, two_shape_prob)
    taken = {s.color for s in sample.shapes}
    rng = np.random.default_rng((world_seed, index, 7))
    free = [c for c in COLORS if c not in taken]
    new = free[int(rng.integers(len(free)))]
    edited = (replace(sample.shapes[0], color=new), *sample.shapes[1:])
    return RecolourCase(index, index, sample, sample.caption,
                        full_caption(edited, sample.background), sample.shapes[0].color, new)


def source_ok(case: RecolourCase, image: np.ndarray) -> bool:
    """The source image shows every shape of the caption (colour, kind, position)."""
    return judge.score_multi(image, case.sample.shapes)


def iter_cases(runner: Any, cfg: Any, world_seed: int, n: int, *, two_shape_prob: float = 0.5,
               max_tries: int | None = None) -> Iterator[tuple[RecolourCase, np.ndarray]]:
    """``(case, source image)`` for the first ``n`` cases whose source reads as prompted.

    ``runner`` is a :class:`training.evaluate.GraphRunner`, ``cfg`` an ``EvalConfig``
    (steps, cfg, sampler of the source images).
    """
    from training.evaluate import txt2img_graph

    found, index = 0, 0
    limit = max_tries if max_tries is not None else 4 * n
    while found < n and index < limit:
        case = make_case(world_seed, index, cfg.image_size, two_shape_prob)
        image = runner.image(txt2img_graph(cfg, case.source_prompt, case.seed,
                                           cfg.image_size))
        index += 1
        if source_ok(case, image):
            found += 1
            yield case, image


def _match(detections: Sequence[judge.Detection], mask: np.ndarray
           ) -> judge.Detection | None:
    best, best_iou = None, 0.5
    for d in detections:
        iou = judge.mask_iou(d.mask, mask)
        if iou >= best_iou:
            best, best_iou = d, iou
    return best


def score_recolour(case: RecolourCase, before: np.ndarray, after: np.ndarray,
                   margin: int = 2) -> RecolourScore:
    """Judge one edit (uint8 ``[H, W, 3]`` source and edited images)."""
    n = len(case.sample.shapes)
    found_before = judge.detect(before, max_objects=n)
    found_after = judge.detect(after, max_objects=n + 1)
    spec = case.sample.shapes[0]
    target = next((d for d in found_before
                   if (d.color, d.shape, d.position) == (spec.color, spec.shape, spec.position)),
                  None)
    if target is None:
        raise ValueError(f"case {case.index}: the source image does not show "
                         f"{spec.color} {spec.shape} at {spec.position}")
    edited = _match(found_after, target.mask)
    region = target.mask | (edited.mask if edited is not None else False)
    region = ndimage.binary_dilation(region, iterations=margin)
    outside = ~region
    psnr = judge.psnr(before[outside], after[outside]) if outside.any() else float("inf")
    others_kept = True
    for d in found_before:
        if d is target:
            continue
        match = _match(found_after, d.mask)
        others_kept &= match is not None and (match.color, match.shape) == (d.color, d.shape)
    return RecolourScore(
        recoloured=edited is not None and edited.color == case.new_color,
        shape_kept=edited is not None and edited.shape == target.shape,
        others_kept=others_kept, psnr_outside=psnr, edit_region=region)


def summarise(scores: Sequence[RecolourScore]) -> dict[str, float]:
    """Rates over the cases: ok, edited, recoloured, shape/others kept, PSNR stats."""
    if not scores:
        return {"n": 0}
    psnrs = np.array([min(s.psnr_outside, 99.0) for s in scores])
    return {
        "n": len(scores),
        "ok": float(np.mean([s.ok for s in scores])),
        "edited": float(np.mean([s.edited for s in scores])),
        "recoloured": float(np.mean([s.recoloured for s in scores])),
        "shape_kept": float(np.mean([s.shape_kept for s in scores])),
        "others_kept": float(np.mean([s.others_kept for s in scores])),
        "psnr_outside_median": float(np.median(psnrs)),
        "psnr_outside_mean": float(psnrs.mean()),
        "psnr_outside_ge_target": float(np.mean(psnrs >= PSNR_TARGET)),
    }
