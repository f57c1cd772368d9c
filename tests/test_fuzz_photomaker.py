"""PhotoMaker Encode with extreme but in-bounds inputs: a finite conditioning or a clear
ValueError, never a raw torch error."""

from __future__ import annotations

import pytest
import torch

from nodes.diffusion.handles import TextEncoder
from nodes.diffusion.photomaker import MAX_ID_IMAGES, PhotoMaker, encode_prompt, photomaker_encode
from nodes.diffusion.tiny_photomaker import build_tiny_photomaker
from nodes.diffusion.tiny_sdxl import build_tiny_sdxl_pipeline
from nodes.photomaker import PhotoMakerEncode


@pytest.fixture(scope="module")
def clip() -> TextEncoder:
    pipe = build_tiny_sdxl_pipeline()
    return TextEncoder(pipe.text_encoder, pipe.tokenizer, "sdxl",
                       text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2)


@pytest.fixture(scope="module")
def pm() -> PhotoMaker:
    return PhotoMaker(build_tiny_photomaker(), "tiny")


def encode(pm, clip, image, text="a man photomaker"):
    (entry,) = photomaker_encode(pm, image, clip, text).entries
    assert bool(entry.embeds.isfinite().all())
    assert entry.options["pooled_output"].shape == (1, 48)
    return entry.embeds


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (1, 1, 16, 3), (1, 16, 1, 4), (2, 5, 7, 1),
                                   (1, 32, 32, 3), (1, 33, 31, 3)])
def test_odd_image_sizes_and_channels(pm, clip, shape):
    assert encode(pm, clip, torch.rand(shape)).shape == (1, 77, 80)


def test_out_of_range_pixels_are_clipped(pm, clip):
    image = torch.rand(1, 32, 32, 3)  # the encoder's size: not resized, only clipped
    wild = image.clone()
    wild[0, 0, 0] = torch.tensor([5.0, -3.0, 1.0])
    clipped = image.clone()
    clipped[0, 0, 0] = torch.tensor([1.0, 0.0, 1.0])
    assert torch.equal(encode(pm, clip, wild), encode(pm, clip, clipped))


def test_the_most_photos(pm, clip):
    embeds = encode(pm, clip, torch.rand(MAX_ID_IMAGES, 4, 4, 3))
    assert embeds.shape == (1, 77, 80)  # 2 + 31 extra copies fit one window


def test_a_long_prompt_with_the_trigger_last(pm, clip):
    text = " ".join(["blue"] * 300) + " man photomaker"
    assert encode(pm, clip, torch.rand(3, 8, 8, 3), text).shape == (1, 5 * 77, 80)


@pytest.mark.parametrize("text", [
    "(a man photomaker smiling:1.5)", "[man] photomaker", "a man  photomaker  smiling",
    "a man photomaker and photomaker again", "embedding:none man photomaker",
    "\\(man\\) photomaker", "man photomaker"])
def test_prompt_shapes(pm, clip, text):
    assert encode(pm, clip, torch.rand(2, 8, 8, 3), text).shape[-1] == 80


def test_the_class_token_of_weighted_and_repeated_triggers(clip):
    # only the first "photomaker" is the trigger (ComfyUI's), the second stays text
    _, _, positions = encode_prompt(clip, "a man photomaker photomaker", 2)
    assert positions == [2, 3]
    _, _, positions = encode_prompt(clip, "(a man photomaker smiling:1.5)", 1)
    assert positions == [2]


@pytest.mark.parametrize(("text", "message"), [
    ("", "no trigger word"), ("photomaker", "nothing before"), ("( photomaker", "nothing before"),
    ("a man Photomaker", "'Photomaker' is not it"), ("a man\nphotomaker", "no trigger word")])
def test_texts_without_a_usable_trigger(pm, clip, text, message):
    with pytest.raises(ValueError, match=message):
        photomaker_encode(pm, torch.rand(1, 8, 8, 3), clip, text)


def test_validation_flags_the_missing_trigger_without_torch_work():
    problems = PhotoMakerEncode.validate_inputs({"text": "a man"}, None)
    assert problems and problems[0][0] == "text" and problems[0][2] == "error"
    assert PhotoMakerEncode.validate_inputs({"text": ["linked", 0]}, None) == []


def test_not_a_photomaker_or_clip(pm, clip):
    with pytest.raises(ValueError, match="Load PhotoMaker"):
        photomaker_encode("nope", torch.rand(1, 8, 8, 3), clip, "a man photomaker")
    with pytest.raises(ValueError, match="checkpoint loader"):
        photomaker_encode(pm, torch.rand(1, 8, 8, 3), "nope", "a man photomaker")
