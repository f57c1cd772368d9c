"""The shared recolour protocol judges ground-truth edits right."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from training.edit_eval import make_case, score_recolour, source_ok, summarise
from training.shapes import COLORS, render


def _rendered(case, first_color=None):
    shapes = case.sample.shapes
    if first_color is not None:
        spec = shapes[0]
        shapes = (replace(spec, color=first_color, rgb=COLORS[first_color]), *shapes[1:])
    image, _ = render(shapes, case.sample.background, 64, np.random.default_rng(0))
    return image


def test_a_true_recolour_passes_and_no_edit_fails():
    for index in range(6):
        case = make_case(77, index)
        assert case.new_color not in {s.color for s in case.sample.shapes}
        assert case.target_prompt != case.source_prompt
        assert case.target_prompt.replace(case.new_color, case.old_color, 1) == case.source_prompt
        before = _rendered(case)
        assert source_ok(case, before)
        good = score_recolour(case, before, _rendered(case, case.new_color))
        assert good.ok and good.psnr_outside == float("inf")
        same = score_recolour(case, before, before)
        assert not same.recoloured and not same.ok


def test_changes_outside_the_shape_cost_psnr_and_lost_shapes_count():
    case = next(c for c in (make_case(77, i) for i in range(40)) if len(c.sample.shapes) == 2)
    before = _rendered(case)
    after = _rendered(case, case.new_color).astype(np.int16)
    noisy = np.clip(after + np.random.default_rng(1).integers(-40, 41, after.shape), 0, 255)
    score = score_recolour(case, before, noisy.astype(np.uint8))
    assert score.psnr_outside < 30 and not score.ok
    # the other shape painted over with the background: not kept
    wiped = _rendered(case, case.new_color).copy()
    wiped[case.sample.masks[1]] = before[0, 0]
    assert not score_recolour(case, before, wiped).others_kept
    stats = summarise([score])
    assert stats["n"] == 1 and stats["ok"] == 0.0
