"""SolidMask, ImageColorToMask, CropMask, MaskComposite and LatentCompositeMasked
(nodes/mask_ops.py), each checked against a hand computation on small tensors."""

from __future__ import annotations

import pytest
import torch

from engine.validation import PromptValidationError
from nodes.diffusion.handles import Latent
from nodes.mask_ops import (
    CropMask,
    ImageColorToMask,
    LatentCompositeMasked,
    MaskComposite,
    SolidMask,
)
from tests.graph_nodes import CAPTURED, run_error


def out(cls, **inputs):
    return cls(**inputs).execute(None)[0]


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --- SolidMask ---------------------------------------------------------------------------


def test_solid_mask():
    mask = out(SolidMask, value=0.25, width=3, height=2)
    assert mask.shape == (1, 2, 3) and mask.dtype == torch.float32
    assert torch.equal(mask, torch.full((1, 2, 3), 0.25))


# --- ImageColorToMask --------------------------------------------------------------------


def test_image_color_to_mask_matches_exact_colour():
    image = torch.zeros(1, 2, 3, 3)
    image[0, 0, 0] = t([1, 0, 0])            # 0xFF0000
    image[0, 0, 1] = t([0.999, 0, 0])        # 254.7 rounds to 255: the same colour
    image[0, 0, 2] = t([0.998, 0, 0])        # 254.5 rounds to 254: another
    image[0, 1, 0] = t([1.2, -0.1, 0])       # clamped to 0..1 first: 0xFF0000
    image[0, 1, 1] = t([1, 0, 1 / 255])      # 0xFF0001
    mask = out(ImageColorToMask, image=image, color=0xFF0000)
    assert torch.equal(mask, t([[[1, 1, 0], [1, 0, 0]]]))  # 1, not ComfyUI's old 255
    assert torch.equal(out(ImageColorToMask, image=image, color=0xFF0001)[0, 1], t([0, 1, 0]))
    # black (the default colour) is every pixel left at 0
    assert torch.equal(out(ImageColorToMask, image=image, color=0)[0, 1], t([0, 0, 1]))


def test_image_color_to_mask_ignores_alpha_and_reads_grey_as_rgb():
    rgba = torch.zeros(2, 1, 2, 4)
    rgba[..., :3] = 128 / 255
    rgba[0, 0, 0, 3] = 0.3
    assert torch.equal(out(ImageColorToMask, image=rgba, color=0x808080), torch.ones(2, 1, 2))
    grey = torch.full((1, 2, 2, 1), 128 / 255)
    assert torch.equal(out(ImageColorToMask, image=grey, color=0x808080), torch.ones(1, 2, 2))


@pytest.mark.parametrize("shape", [(2, 2, 3), (1, 2, 2, 2), (1, 0, 2, 3)])
def test_image_color_to_mask_bad_image(shape):
    with pytest.raises(ValueError, match="image"):
        out(ImageColorToMask, image=torch.zeros(shape), color=0)


# --- CropMask ----------------------------------------------------------------------------


def test_crop_mask():
    mask = torch.arange(20, dtype=torch.float32).view(1, 4, 5)
    crop = out(CropMask, mask=mask, x=1, y=1, width=2, height=2)
    assert torch.equal(crop, t([[[6, 7], [11, 12]]]))
    # past the right and bottom edges: cut there
    crop = out(CropMask, mask=mask, x=3, y=2, width=512, height=512)
    assert torch.equal(crop, t([[[13, 14], [18, 19]]]))
    # a 2-D mask is a batch of one; the input is not a view of the output
    crop = out(CropMask, mask=mask[0], x=0, y=0, width=1, height=1)
    assert torch.equal(crop, t([[[0]]]))
    crop[...] = 5
    assert mask[0, 0, 0] == 0


@pytest.mark.parametrize("x, y", [(5, 0), (0, 4)])
def test_crop_mask_corner_outside_is_an_error(x, y):
    with pytest.raises(ValueError, match="outside the 5x4 mask"):
        out(CropMask, mask=torch.ones(1, 4, 5), x=x, y=y, width=2, height=2)


# --- MaskComposite -----------------------------------------------------------------------

DEST = t([[[0.2, 0.4, 0.6, 0.8],
           [1.0, 0.0, 0.5, 0.8],
           [0.3, 0.7, 0.9, 0.1]]])
SOURCE = t([[[0.6, 1.0],
             [0.0, 0.25]]])
# at x=2, y=1 the source covers DEST's rows 1-2, columns 2-3: [[0.5, 0.8], [0.9, 0.1]]
# (set by rounding: [[0, 1], [1, 0]]; the source's: [[1, 1], [0, 0]])
REGION = {
    "multiply": [[0.3, 0.8], [0.0, 0.025]],
    "add": [[1.0, 1.0], [0.9, 0.35]],        # 1.1 and 1.8 clamped
    "subtract": [[0.0, 0.0], [0.9, 0.0]],    # -0.1, -0.2, -0.15 clamped
    "and": [[0, 1], [0, 0]],
    "or": [[1, 1], [1, 0]],
    "xor": [[1, 0], [1, 0]],
}


@pytest.mark.parametrize("operation", list(REGION))
def test_mask_composite_operations(operation):
    result = out(MaskComposite, destination=DEST, source=SOURCE, x=2, y=1,
                 operation=operation)
    expected = DEST.clone()
    expected[0, 1:3, 2:4] = t(REGION[operation])
    assert torch.allclose(result, expected, atol=1e-6)
    assert DEST[0, 1, 2] == 0.5  # the destination is not changed in place


def test_mask_composite_partly_and_wholly_outside():
    # at x=3, y=2 only the source's top-left value lands (on DEST[2, 3] = 0.1)
    result = out(MaskComposite, destination=DEST, source=SOURCE, x=3, y=2, operation="add")
    expected = DEST.clone()
    expected[0, 2, 3] = 0.7
    assert torch.allclose(result, expected)
    for x, y in ((4, 0), (0, 3), (100, 100)):
        result = out(MaskComposite, destination=DEST, source=SOURCE, x=x, y=y,
                     operation="or")
        assert torch.equal(result, DEST)


def test_mask_composite_clamps_the_whole_result():
    dest = t([[[1.5, -0.5]]])
    result = out(MaskComposite, destination=dest, source=t([[[0.5]]]), x=0, y=0,
                 operation="multiply")
    assert torch.equal(result, t([[[0.75, 0.0]]]))


def test_mask_composite_batches():
    # one destination, two sources: two results
    dest = torch.zeros(1, 2, 2)
    source = t([[[1.0]], [[0.5]]])
    result = out(MaskComposite, destination=dest, source=source, x=1, y=0, operation="add")
    assert torch.equal(result, t([[[0, 1], [0, 0]], [[0, 0.5], [0, 0]]]))
    # two destinations, one 2-D source
    result = out(MaskComposite, destination=torch.ones(2, 2, 2), source=t([[0.25]]),
                 x=0, y=1, operation="subtract")
    assert torch.equal(result, t([[[1, 1], [0.75, 1]]] * 2))
    with pytest.raises(ValueError, match=r"batches do not match \(destination 2, source 3\)"):
        out(MaskComposite, destination=torch.ones(2, 2, 2), source=torch.ones(3, 1, 1))


def test_mask_composite_bad_rank():
    with pytest.raises(ValueError, match=r"must be \[B, H, W\]"):
        out(MaskComposite, destination=torch.ones(1, 1, 1, 2, 2), source=torch.ones(1, 1, 1))
    with pytest.raises(ValueError, match=r"must be \[B, H, W\]"):
        out(MaskComposite, destination=torch.ones(1, 2, 2), source=torch.ones(1, 3, 2, 2))


# --- LatentCompositeMasked ---------------------------------------------------------------


def latent(batch=1, channels=2, h=4, w=4, offset=0.0, **fields) -> Latent:
    n = batch * channels * h * w
    return Latent(torch.arange(n, dtype=torch.float32).view(batch, channels, h, w) + offset,
                  **fields)


def test_latent_composite_masked_without_mask_partly_outside():
    dest = latent(noise_mask=torch.ones(1, 1, 4, 4), assumed_downscale=8)
    source = latent(h=2, w=2, offset=100)
    # x=16, y=24 px = latent (2, 3): the source's first row lands on row 3, columns 2-3
    result = out(LatentCompositeMasked, destination=dest, source=source, x=16, y=24)
    expected = dest.samples.clone()
    expected[:, :, 3, 2:4] = source.samples[:, :, 0, 0:2]
    assert torch.equal(result.samples, expected)
    assert result.noise_mask is dest.noise_mask and result.assumed_downscale == 8
    assert torch.equal(dest.samples, latent().samples)  # not changed in place
    # x not a multiple of 8 is floored (ComfyUI's x // 8); wholly outside changes nothing
    floored = out(LatentCompositeMasked, destination=dest, source=source, x=23, y=31)
    assert torch.equal(floored.samples, expected)
    outside = out(LatentCompositeMasked, destination=dest, source=source, x=32, y=0)
    assert torch.equal(outside.samples, dest.samples)


def test_latent_composite_masked_blends_by_mask():
    dest, source = latent(), latent(h=2, w=2, offset=100)
    mask = t([[[0.5, 1.0], [0.0, 0.25]]])  # at the source's size
    result = out(LatentCompositeMasked, destination=dest, source=source, x=8, y=0, mask=mask)
    expected = dest.samples.clone()
    d, s = dest.samples[:, :, 0:2, 1:3], source.samples
    expected[:, :, 0:2, 1:3] = d * (1 - mask[:, None]) + s * mask[:, None]
    assert torch.allclose(result.samples, expected)
    assert result.samples[0, 1, 0, 1] == 0.5 * 17 + 0.5 * 104  # one value by hand
    # a mask at the pixel size (16x16 for a 2x2 source) is averaged down bilinearly
    big = torch.zeros(1, 16, 16)
    big[:, :8, :8] = 1  # the top-left latent cell only
    result = out(LatentCompositeMasked, destination=dest, source=source, x=0, y=0, mask=big)
    expected = dest.samples.clone()
    expected[:, :, 0, 0] = source.samples[:, :, 0, 0]
    assert torch.allclose(result.samples, expected)


def test_latent_composite_masked_resize_source():
    dest = latent()
    source = Latent(t([1.0, 2.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2))  # constant per channel
    # stretched to 4x4 (still constant); from x=8 it covers columns 1-3
    result = out(LatentCompositeMasked, destination=dest, source=source, x=8, y=0,
                 resize_source=True)
    expected = dest.samples.clone()
    expected[:, 0, :, 1:] = 1.0
    expected[:, 1, :, 1:] = 2.0
    assert torch.equal(result.samples, expected)
    # the mask is stretched to the resized source: [[1, 0], [0, 0]] → outer([1, .75, .25, 0])
    mask = t([[[1.0, 0.0], [0.0, 0.0]]])
    result = out(LatentCompositeMasked, destination=dest, source=source, x=0, y=0,
                 resize_source=True, mask=mask)
    ramp = t([1.0, 0.75, 0.25, 0.0])
    weight = (ramp[:, None] * ramp[None, :])[None, None]
    expected = dest.samples * (1 - weight) + t([1.0, 2.0]).view(1, 2, 1, 1) * weight
    assert torch.allclose(result.samples, expected, atol=1e-6)


def test_latent_composite_masked_batches():
    dest = latent(batch=2)
    source = latent(h=1, w=1, offset=100)  # one source for both
    result = out(LatentCompositeMasked, destination=dest, source=source)
    assert torch.equal(result.samples[:, :, 0, 0], t([[100, 101]] * 2))
    # one mask per latent
    masks = t([[[1.0]], [[0.0]]])
    result = out(LatentCompositeMasked, destination=dest, source=source, mask=masks)
    assert torch.equal(result.samples[:, :, 0, 0], t([[100, 101], [32, 48]]))
    with pytest.raises(ValueError, match=r"\(destination 2, source 3\)"):
        out(LatentCompositeMasked, destination=dest, source=latent(batch=3))
    with pytest.raises(ValueError, match=r"\(destination 2, source 1, mask 3\)"):
        out(LatentCompositeMasked, destination=dest, source=source, mask=torch.ones(3, 1, 1))


def test_latent_composite_masked_bad_inputs():
    dest = latent()
    with pytest.raises(ValueError, match="3 channels but the destination has 2"):
        out(LatentCompositeMasked, destination=dest, source=latent(channels=3))
    with pytest.raises(ValueError, match=r"source latent must be \[B, C, h, w\]"):
        out(LatentCompositeMasked, destination=dest, source=Latent(torch.ones(2, 4, 4)))
    with pytest.raises(ValueError, match=r"destination latent must be"):
        out(LatentCompositeMasked, destination=Latent(torch.ones(1, 2, 0, 4)), source=dest)
    with pytest.raises(ValueError, match=r"must be \[B, H, W\]"):
        out(LatentCompositeMasked, destination=dest, source=dest, mask=torch.ones(1, 2, 4, 4))
    with pytest.raises(ValueError, match="mask is empty"):
        out(LatentCompositeMasked, destination=dest, source=dest, mask=torch.ones(1, 0, 4))


# --- through a session: an API-format prompt with these class types ----------------------


def prompt() -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-tiny"}},
        "zero": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 16,
                                                       "height": 16}},
        "one": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 8, "height": 8}},
        "comp": {"class_type": "MaskComposite", "inputs": {
            "destination": ["zero", 0], "source": ["one", 0], "x": 4, "y": 4,
            "operation": "or"}},
        "crop": {"class_type": "CropMask", "inputs": {"mask": ["comp", 0], "x": 0, "y": 0,
                                                      "width": 12, "height": 12}},
        "red": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16,
                                                       "batch_size": 1, "color": 0xFF0000}},
        "is_red": {"class_type": "ImageColorToMask", "inputs": {"image": ["red", 0],
                                                                "color": 0xFF0000}},
        "mask": {"class_type": "MaskComposite", "inputs": {
            "destination": ["crop", 0], "source": ["is_red", 0], "x": 0, "y": 0,
            "operation": "multiply"}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["red", 0],
                                                      "vae": ["ckpt", 2]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16,
                                                               "batch_size": 1}},
        "paste": {"class_type": "LatentCompositeMasked", "inputs": {
            "destination": ["empty", 0], "source": ["enc", 0], "x": 0, "y": 0,
            "resize_source": False, "mask": ["mask", 0]}},
        "c_mask": {"class_type": "TestCapture", "inputs": {"value": ["mask", 0],
                                                           "key": "mask_ops_mask"}},
        "c_enc": {"class_type": "TestCapture", "inputs": {"value": ["enc", 0],
                                                          "key": "mask_ops_enc"}},
        "c_paste": {"class_type": "TestCapture", "inputs": {"value": ["paste", 0],
                                                            "key": "mask_ops_paste"}},
    }


def test_api_prompt_validates_and_runs(session):
    graph = prompt()
    session.validate(graph)
    result = session.run(graph)
    assert result.ok, result.run.error
    mask = CAPTURED.pop("mask_ops_mask")
    expected = torch.zeros(1, 12, 12)
    expected[:, 4:, 4:] = 1
    assert torch.equal(mask, expected)
    encoded = CAPTURED.pop("mask_ops_enc").samples
    pasted = CAPTURED.pop("mask_ops_paste").samples
    assert encoded.shape == pasted.shape == (1, 4, 2, 2)
    # the 12x12 mask sampled bilinearly at the 2x2 grid's centres (2.5, 8.5): [[0, 0], [0, 1]]
    weight = t([[0, 0], [0, 1]])
    assert torch.allclose(pasted, encoded * weight, atol=1e-6)


def test_bad_values_are_validation_or_run_errors(session):
    graph = prompt()
    graph["comp"]["inputs"]["operation"] = "nand"
    with pytest.raises(PromptValidationError):
        session.validate(graph)
    graph = prompt()
    graph["paste"]["inputs"]["x"] = 4  # not a multiple of 8
    with pytest.raises(PromptValidationError):
        session.validate(graph)
    graph = prompt()
    graph["crop"]["inputs"]["x"] = 16  # past the 16x16 mask
    assert "outside the 16x16 mask" in run_error(session, graph)
