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
    document = json.loads(text["steerflow"])
    assert document["prompt"]["2"]["mode"] == "bypass"
    assert document["prompt"]["4"]["mode"] == "muted"
    # "workflow" is ComfyUI's UI format (what ComfyUI's front end opens from the image),
    # with the same modes
    ui = json.loads(text["workflow"])
    assert {str(n["id"]): n["mode"] for n in ui["nodes"]} == {"1": 0, "2": 4, "3": 0, "4": 2}
    assert ui["version"] == 0.4 and ui["links"]
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


def test_prefix_variables_as_comfyuis(tmp_path):
    """%width%, %height% and the date make ComfyUI's dated folders and sized names."""
    import time

    from engine import Environment
    from nodes.output_files import expand_prefix, split_prefix

    now = time.struct_time((2026, 3, 7, 9, 5, 1, 0, 0, -1))
    assert expand_prefix("%year%-%month%-%day%/img_%width%x%height%", 96, 64, now) == \
        "2026-03-07/img_96x64"
    assert expand_prefix("t%hour%%minute%%second%", now=now) == "t090501"
    assert expand_prefix("100%_done") == "100%_done"  # not a variable: kept
    env = Environment.create(tmp_path, device="cpu")
    folder, subfolder, stem = split_prefix(env, "output", "%year%/x_%width%", "S", (8, 4))
    assert subfolder == str(time.localtime().tm_year) and stem == "x_8" and folder.is_dir()


def test_front_end_tokens_in_a_prefix_are_filled_in():
    """ComfyUI's front end fills %date:...% and %Node.widget% in before it queues; our
    canvas, CLI and API clients get them filled in at save time."""
    import time

    from nodes.output_files import expand_prefix

    now = time.strptime("2026-03-04 05:06:07", "%Y-%m-%d %H:%M:%S")
    prompt = {"3": {"class_type": "KSampler", "inputs": {"seed": 42, "model": ["4", 0]},
                    "_meta": {"title": "Base pass"}},
              "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "a/b: c?"},
                    "_meta": {"title": "Positive"}},
              "8": {"class_type": "TestFlag", "inputs": {"on": True}}}
    expand = lambda text: expand_prefix(text, 64, 48, now=now, prompt=prompt)  # noqa: E731
    assert expand("%date:yyyy-MM-dd%/img") == "2026-03-04/img"
    assert expand("%date:yy.M.d h-m-s%") == "26.3.4 5-6-7"
    assert expand("%date:hh.mm.ss%_%width%x%height%") == "05.06.07_64x48"
    assert expand("ComfyUI_%KSampler.seed%") == "ComfyUI_42"
    assert expand("%Base pass.seed%_%Positive.text%") == "42_a_b_ c_"
    assert expand("%TestFlag.on%") == "true"
    # a seed linked from a primitive (a converted ComfyUI PrimitiveNode): its value
    linked = {**prompt, "3": {"class_type": "KSampler", "inputs": {"seed": ["20", 0]}},
              "20": {"class_type": "PrimitiveInt", "inputs": {"value": 1234}}}
    assert expand_prefix("s_%KSampler.seed%", now=now, prompt=linked) == "s_1234"
    # what names nothing stays as it was: an unknown node or widget, a link, a bare word
    for text in ("%Nope.seed%", "%KSampler.nope%", "%KSampler.model%", "%odd%", "100%"):
        assert expand(text) == text
    assert expand_prefix("%KSampler.seed%", now=now) == "%KSampler.seed%"  # no prompt


def test_our_chunk_alone_or_beside_a_broken_one_opens(session, tmp_path):
    """The canvas opened a PNG with only a ``steerflow`` chunk, or a corrupt ``workflow``
    beside a good ``steerflow``; ``steerflow run`` and Session refused both."""
    from PIL import PngImagePlugin

    from engine.workflow import load_workflow

    (png,) = session.run(moded_prompt()).image_paths
    with Image.open(png) as img:
        own, pixels = img.text["steerflow"], img.copy()
    for name, chunks in (("only.png", {"steerflow": own}),
                         ("broken.png", {"workflow": '{"nodes": [', "steerflow": own})):
        info = PngImagePlugin.PngInfo()
        for key, value in chunks.items():
            info.add_text(key, value)
        pixels.save(tmp_path / name, pnginfo=info)
        prompt, document = load_workflow(tmp_path / name)
        assert document == json.loads(own) and prompt["2"]["mode"] == "bypass"


def test_a_prefix_with_front_end_tokens_saves_anew_and_is_checked_once_filled_in():
    """%Node.widget% is read at save time: the save node's inputs alone did not change
    when the value did, so the cache served the old name; a filled-in value could also
    put control characters, or a name too long, past the validation of the prefix."""
    import pytest

    from nodes.output_files import expand_prefix, prefix_fingerprint, split_prefix

    assert prefix_fingerprint("plain") is None
    assert prefix_fingerprint("%year%/x") is None  # the server's own variables: as before
    assert prefix_fingerprint("%S.value%") != prefix_fingerprint("%S.value%")
    day = prefix_fingerprint("%date:yyyy-MM-dd%/img")
    assert day == prefix_fingerprint("%date:yyyy-MM-dd%/other")
    prompt = {"1": {"class_type": "PrimitiveString", "inputs": {"value": "a\nb\x1b[31m"}}}
    assert expand_prefix("%PrimitiveString.value%", prompt=prompt) == "a_b_[31m"

    class Env:
        def folder(self, *a, **k):
            raise AssertionError("no folder is made for a refused name")

    long = {"1": {"class_type": "PrimitiveString", "inputs": {"value": "x" * 300}}}
    with pytest.raises(ValueError, match=r"its %\.\.\.% filled in.*shorten it"):
        split_prefix(Env(), "output", "%PrimitiveString.value%", "d", prompt=long)
