"""Save nodes' numbered files and the metadata a saved PNG carries."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.session import Session
from nodes.output_files import next_number


def test_the_counter_follows_the_prefix_directly(tmp_path):
    """As ComfyUI's get_save_image_path: a longer prefix sharing the start
    (``x_plain_00001_``) is another prefix, not a file of ``x``."""
    for name in ("x_plain_00001_.png", "x_plain_00007_.png", "x_00001_x_00009_.png",
                 "xy_00004_.png", "x_00002_.jpg"):
        (tmp_path / name).write_bytes(b"")
    assert next_number(tmp_path, "x", ".png") == 1
    (tmp_path / "x_00003_.png").write_bytes(b"")
    assert next_number(tmp_path, "x", ".png") == 4
    assert next_number(tmp_path, "x_plain", ".png") == 8
    (tmp_path / "a[b]_00002_.png").write_bytes(b"")  # glob characters in the prefix
    assert next_number(tmp_path, "a[b]", ".png") == 3


@pytest.fixture
def session(tmp_path, models_dir):
    return Session(tmp_path, models_dir=models_dir, device="cpu")


def moded_prompt() -> dict:
    """Load → Invert (bypassed) → Save, and a muted Preview."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "sks_heart_0.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}, "mode": "bypass"},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0],
                                                    "filename_prefix": "moded"}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}, "mode": "muted"},
    }


def test_the_png_prompt_chunk_is_api_format_without_modes(session, tmp_path):
    """ComfyUI ignores ``mode``: a chunk with the bypassed node in it would replay the
    inversion. The ``workflow`` chunk (the editable document) keeps the modes."""
    result = session.run(moded_prompt())
    (png,) = result.image_paths
    with Image.open(png) as img:
        text = dict(img.text)
        saved = np.asarray(img.convert("RGB"))
    prompt = json.loads(text["prompt"])
    assert sorted(prompt) == ["1", "3"]
    assert prompt["3"]["inputs"]["images"] == ["1", 0]  # rewired through the bypass
    assert not any("mode" in node for node in prompt.values())
    document = json.loads(text["workflow"])
    assert document["prompt"]["2"]["mode"] == "bypass"
    assert document["prompt"]["4"]["mode"] == "muted"
    with Image.open(tmp_path / "input" / "sks_heart_0.png") as src:
        assert np.array_equal(saved, np.asarray(src.convert("RGB")))  # not inverted

    # A replay of the prompt chunk alone (as ComfyUI or an API client would), and of
    # the PNG itself, make the same image.
    for again in (session.run(prompt), session.run(png)):
        (path,) = again.image_paths
        with Image.open(path) as img:
            assert np.array_equal(np.asarray(img.convert("RGB")), saved)


def test_a_prompt_without_modes_is_written_as_it_ran(session):
    prompt = moded_prompt()
    del prompt["4"]
    prompt["2"].pop("mode")
    (png,) = session.run(prompt).image_paths
    with Image.open(png) as img:
        assert json.loads(img.text["prompt"]) == prompt
