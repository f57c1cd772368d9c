"""The new shape (a heart) for the training nodes' measurement: drawn in the shapes world's
style, told apart from every known shape by template IoU, and the measurement's scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import judge
from training import new_shapes as ns
from training.shapes import COLORS, SHAPES, generate

ROOT = Path(__file__).resolve().parents[1]


def test_training_set_covers_the_world_and_matches_the_shipped_assets():
    samples = ns.training_set()
    assert len(samples) == 8
    assert sorted(s.spec.color for s in samples) == sorted(COLORS)  # each colour once
    assert {s.spec.size for s in samples} == {"small", "large"}
    assert len({s.spec.position for s in samples}) == 8
    for i, s in enumerate(samples):
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        assert f" {ns.WORD} " in s.caption and s.caption.startswith(f"a {s.spec.size} ")
        shipped = np.asarray(Image.open(ROOT / "workflows" / "assets" / f"sks_heart_{i}.png"))
        # python -m training.new_shapes rewrites them; they must not drift from the code
        assert np.array_equal(shipped[..., :3], s.image), f"sks_heart_{i}.png is stale"
    again = ns.training_set()
    assert all(np.array_equal(a.image, b.image) for a, b in zip(samples, again, strict=True))


def test_hearts_read_as_hearts_in_their_colour_and_cell():
    for i in range(40):
        s = ns.generate_heart(3, i)
        v = ns.classify_new(s.image)
        assert v.matches(s.spec.color), (i, v)
        assert v.heart_iou >= 0.9 and v.known_iou < ns.IOU_THRESHOLD
        # centred on its area centroid, like the world's shapes: the judge reads the cell
        assert judge.position_of(s.mask) == s.spec.position


@pytest.mark.parametrize("shape", SHAPES)
def test_no_known_shape_reads_as_a_heart(shape):
    found = 0
    for i in range(400):
        s = generate(11, i, 64, 0.0)
        if s.shapes[0].shape != shape:
            continue
        v = ns.classify_new(s.image)
        assert not v.is_new_shape and v.heart_iou < ns.IOU_THRESHOLD, (i, v)
        assert v.shape == shape
        found += 1
        if found == 8:
            break
    assert found == 8


def test_verdicts_and_summary():
    blank = np.full((64, 64, 3), 128, np.uint8)
    nothing = ns.classify_new(blank)
    assert not nothing.found and nothing.shape == "nothing" and not nothing.matches("red")
    red = ns.generate_heart(0, 0, color="red", background="white")
    blue = ns.generate_heart(0, 1, color="blue", background="gray")
    circle = next(s for i in range(100) if (s := generate(0, i, 64, 0.0)).shapes[0].shape
                  == "circle")
    verdicts = [ns.classify_new(img) for img in (red.image, blue.image, circle.image, blank)]
    asked = ["red", "red", circle.shapes[0].color, "green"]
    assert [v.shape for v in verdicts] == ["heart", "heart", "circle", "nothing"]
    summary = ns.summarise(verdicts, asked)
    assert summary == {"n": 4, "match": 0.25, "heart": 0.5, "color": 0.5}
    assert ns.summarise([], []) == {"n": 0}


def test_captions_follow_the_world_and_take_any_word():
    s = ns.generate_heart(1, 2, color="pink", position="bottom left", size="small",
                          background="striped")
    assert s.caption == "a small pink sks at the bottom left on a striped background"
    assert ns.caption(s.spec, None, "<sks>") == "a small pink <sks> at the bottom left"


def test_prior_images_are_the_worlds_and_shipped():
    files = ns.training_files()
    assert [f[0] for f in files] == ([f"sks_heart_{i}.png" for i in range(8)]
                                     + [f"sks_prior_{i}.png" for i in range(ns.PRIOR_IMAGES)])
    for name, image, text in files[8:]:
        assert ns.WORD not in text and any(f" {s} " in text for s in SHAPES)
        shipped = np.asarray(Image.open(ROOT / "workflows" / "assets" / name))
        assert np.array_equal(shipped[..., :3], image), f"{name} is stale"


@pytest.mark.parametrize(("name", "count"), [("train_new_shape_lora", 16),
                                             ("train_new_shape_ti", 8),
                                             ("train_new_shape_dreambooth", 16)])
def test_example_workflows_train_on_the_shipped_images(name, count):
    doc = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    nodes = doc["prompt"].values()
    files = ns.training_files()[:count]
    batch = next(n for n in nodes if n["class_type"] == "LoadImageBatch")
    assert batch["inputs"]["images"].split("\n") == [f[0] for f in files]
    train = next(n for n in nodes if n["class_type"].startswith("Train"))
    captions = train["inputs"]["captions"].split("\n")
    word = train["inputs"].get("placeholder_token", ns.WORD)
    assert captions == [f[2].replace(f" {ns.WORD} ", f" {word} ") for f in files]
    prompts = [n["inputs"]["text"] for n in nodes if n["class_type"] == "CLIPTextEncode"]
    assert any(word in p for p in prompts)
