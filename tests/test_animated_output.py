"""SaveAnimatedWEBP / SaveAnimatedPNG: an image batch saved as one animated file, with
the prompt and workflow embedded; bad input is a structured error."""

from __future__ import annotations

import json

import pytest
from PIL import Image

GRAPH = {
    "img": {"class_type": "EmptyImage", "inputs": {"width": 24, "height": 16, "batch_size": 3,
                                                   "color": 0xFF0000}},
    "noise": {"class_type": "ImageAddNoise", "inputs": {"image": ["img", 0], "seed": 1,
                                                        "strength": 0.5}},
}


def _run(session, node: dict) -> tuple[object, dict]:
    result = session.run({**GRAPH, "save": node})
    return result, result.outputs if result.ok else {}


@pytest.mark.parametrize(("type_", "extra", "suffix"), [
    ("SaveAnimatedWEBP", {"lossless": True, "quality": 80, "method": "fastest"}, ".webp"),
    ("SaveAnimatedWEBP", {"lossless": False, "quality": 50, "method": "default"}, ".webp"),
    ("SaveAnimatedPNG", {"compress_level": 1}, ".png"),
])
def test_saves_one_animated_file(session, type_, extra, suffix):
    node = {"class_type": type_, "inputs": {"images": ["noise", 0], "filename_prefix": "anim/a",
                                            "fps": 8.0, **extra}}
    result = session.run({**GRAPH, "save": node})
    assert result.ok, result.run.error
    (path,) = [p for p in result.image_paths if str(p).endswith(suffix)]
    with Image.open(path) as im:
        assert im.size == (24, 16) and getattr(im, "n_frames", 1) == 3
        im.load()  # WEBP reports a frame's duration once it is read
        assert im.info.get("duration") == 125
        if suffix == ".png":
            assert json.loads(im.info["prompt"])["save"]["class_type"] == type_
            assert "workflow" in im.info
        else:
            exif = im.getexif()
            assert exif[0x0110].startswith("prompt:")
            assert json.loads(exif[0x0110][len("prompt:"):])["save"]["class_type"] == type_


def test_bad_inputs_are_refused(session):
    from engine.validation import PromptValidationError

    node = {"class_type": "SaveAnimatedWEBP", "inputs": {
        "images": ["noise", 0], "filename_prefix": "../escape", "fps": 6.0, "lossless": True,
        "quality": 80, "method": "default"}}
    with pytest.raises(PromptValidationError):
        session.validate({**GRAPH, "save": node})
    node["inputs"].update(filename_prefix="ok", fps=0.0)
    with pytest.raises(PromptValidationError):
        session.validate({**GRAPH, "save": node})
