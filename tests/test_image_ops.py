"""Invert, Blend, Blur, Sharpen, Quantize, Crop, Flip, Rotate, Repeat, From Batch and
Get Image Size (nodes/image_ops.py), each checked against a hand computation on small
tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.validation import PromptValidationError
from nodes.image_ops import (
    GetImageSize,
    ImageBlend,
    ImageBlur,
    ImageCrop,
    ImageFlip,
    ImageFromBatch,
    ImageInvert,
    ImageQuantize,
    ImageRotate,
    ImageSharpen,
    RepeatImageBatch,
    bayer_matrix,
    blend,
)
from tests.graph_nodes import CAPTURED, run_error


def out(cls, **inputs):
    return cls(**inputs).execute(None)[0]


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def grey(rows) -> torch.Tensor:
    """A batch of one RGB image whose three channels are ``rows`` (H x W)."""
    return t(rows)[None, ..., None].expand(-1, -1, -1, 3).clone()


def numbered(batch=1, h=2, w=3, c=3) -> torch.Tensor:
    return torch.arange(batch * h * w * c, dtype=torch.float32).view(batch, h, w, c)


# --- ImageInvert -------------------------------------------------------------------------


def test_invert_keeps_alpha():
    image = t([[[[0.0, 0.25, 1.0, 0.3]]]])
    assert torch.allclose(out(ImageInvert, image=image), t([[[[1.0, 0.75, 0.0, 0.3]]]]))
    assert torch.allclose(out(ImageInvert, image=image[..., :3]), t([[[[1.0, 0.75, 0.0]]]]))


# --- ImageBlend --------------------------------------------------------------------------

A, B = [0.2, 0.8], [0.6, 0.6]
MODES = {
    "normal": [0.6, 0.6],
    "multiply": [0.12, 0.48],
    "screen": [1 - 0.8 * 0.4, 1 - 0.2 * 0.4],
    "overlay": [2 * 0.2 * 0.6, 1 - 2 * 0.2 * 0.4],
    # b > 0.5: a + (2b - 1)(g(a) - a), g the cubic below a = 0.25 and the root above
    "soft_light": [0.2 + 0.2 * (((16 * 0.2 - 12) * 0.2 + 4) * 0.2 - 0.2),
                   0.8 + 0.2 * (math.sqrt(0.8) - 0.8)],
    "difference": [-0.4, 0.2],  # a - b, not |a - b|: clamped after mixing
}


@pytest.mark.parametrize("mode", list(MODES))
def test_blend_modes(mode):
    a, b = grey([A]), grey([B])
    full = out(ImageBlend, image1=a, image2=b, blend_factor=1.0, blend_mode=mode)
    assert torch.allclose(full, grey([MODES[mode]]).clamp(0, 1), atol=1e-6)
    half = out(ImageBlend, image1=a, image2=b, blend_factor=0.5, blend_mode=mode)
    assert torch.allclose(half, ((a + grey([MODES[mode]])) / 2).clamp(0, 1), atol=1e-6)
    assert torch.equal(out(ImageBlend, image1=a, image2=b, blend_factor=0.0,
                           blend_mode=mode), a)


def test_soft_light_dark_branches():
    a, b = t([0.2, 0.16, 0.64]), t([0.25, 0.75, 0.75])
    lift = ((16 * 0.16 - 12) * 0.16 + 4) * 0.16  # below 0.25 the cubic, not the root
    expected = t([0.2 - 0.5 * 0.2 * 0.8, 0.16 + 0.5 * (lift - 0.16), 0.64 + 0.5 * 0.16])
    assert torch.allclose(blend(a, b, "soft_light"), expected, atol=1e-6)
    with pytest.raises(ValueError, match="unknown blend_mode"):
        blend(a, b, "hue")


def test_blend_resizes_matches_channels_and_batches():
    a = torch.full((2, 3, 4, 4), 0.5)
    a[..., 3] = t([0.1, 0.2])[:, None, None]
    b = torch.full((1, 1, 1, 3), 0.25)  # 1x1, RGB, one image: stretched and repeated
    res = out(ImageBlend, image1=a, image2=b, blend_factor=1.0, blend_mode="multiply")
    assert res.shape == (2, 3, 4, 4)
    assert torch.allclose(res[..., :3], torch.full((2, 3, 4, 3), 0.125))
    assert torch.equal(res[..., 3], a[..., 3])  # image1's alpha
    # a grey image2 counts as R = G = B; RGBA over RGB drops image2's alpha
    g = out(ImageBlend, image1=a[..., :3], image2=torch.full((1, 3, 4, 1), 0.25),
            blend_factor=1.0, blend_mode="normal")
    assert torch.allclose(g, torch.full((2, 3, 4, 3), 0.25))
    res = out(ImageBlend, image1=a[:1, ..., :3], image2=a, blend_factor=1.0,
              blend_mode="normal")  # one image1 under two image2
    assert res.shape == (2, 3, 4, 3)
    with pytest.raises(ValueError, match="batches do not match"):
        out(ImageBlend, image1=a, image2=torch.zeros(3, 3, 4, 3), blend_factor=0.5,
            blend_mode="normal")


# --- ImageBlur and ImageSharpen ----------------------------------------------------------


def comfy_kernel(radius: int, sigma: float) -> torch.Tensor:
    """ComfyUI's 2-D kernel, written out: a Gaussian over -1..1 in both directions."""
    x = torch.linspace(-1, 1, 2 * radius + 1)
    d2 = x[:, None] ** 2 + x[None, :] ** 2
    k = torch.exp(-d2 / (2 * sigma * sigma))
    return k / k.sum()


def conv_reference(image: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    c = image.shape[-1]
    x = F.pad(image.movedim(-1, 1), (radius,) * 4, mode="reflect")
    x = F.conv2d(x, kernel.expand(c, 1, *kernel.shape), groups=c)
    return x.movedim(1, -1)


def test_blur_of_an_impulse():
    image = torch.zeros(1, 7, 7, 3)
    image[0, 3, 3] = 1
    res = out(ImageBlur, image=image, blur_radius=1, sigma=1.0)
    # the 1-D weights exp(-x²/2) at x = -1, 0, 1, normalised
    side = math.exp(-0.5)
    w0, w1 = 1 / (1 + 2 * side), side / (1 + 2 * side)
    assert res[0, 3, 3, 0].item() == pytest.approx(w0 * w0, abs=1e-6)
    assert res[0, 2, 3, 0].item() == pytest.approx(w0 * w1, abs=1e-6)
    assert res[0, 2, 2, 0].item() == pytest.approx(w1 * w1, abs=1e-6)
    assert res[0, 0].abs().max() == 0  # 3 x 3 support only
    assert res.sum(dim=(1, 2)).allclose(torch.ones(1, 3))
    assert torch.allclose(res, res.flip(1), atol=1e-7)
    assert torch.allclose(res, res.flip(2), atol=1e-7)
    assert torch.allclose(res, res.transpose(1, 2), atol=1e-7)


@pytest.mark.parametrize(("radius", "sigma"), [(1, 1.0), (3, 0.5), (5, 2.3)])
def test_blur_matches_comfyui_kernel_with_mirrored_edges(radius, sigma):
    image = torch.rand(2, 9, 11, 4, generator=torch.Generator().manual_seed(radius))
    res = out(ImageBlur, image=image, blur_radius=radius, sigma=sigma)
    expected = conv_reference(image, comfy_kernel(radius, sigma), radius)
    assert res.shape == image.shape
    assert torch.allclose(res, expected, atol=1e-5)


def test_blur_radius_past_a_tiny_image():
    # torch's reflect padding refuses this; the mirrored index keeps reflecting
    image = torch.rand(1, 2, 3, 3)
    res = out(ImageBlur, image=image, blur_radius=31, sigma=10.0)
    assert res.shape == image.shape and torch.isfinite(res).all()
    flat = torch.full((1, 1, 1, 3), 0.4)
    assert torch.allclose(out(ImageBlur, image=flat, blur_radius=4, sigma=1.0), flat)


def test_sharpen_flat_image_unchanged_and_impulse():
    flat = torch.full((1, 5, 5, 3), 0.3)
    assert torch.allclose(out(ImageSharpen, image=flat, sharpen_radius=2, sigma=1.0,
                              alpha=5.0), flat, atol=1e-6)
    image = torch.full((1, 5, 5, 3), 0.5)
    image[0, 2, 2] = 0.6
    res = out(ImageSharpen, image=image, sharpen_radius=1, sigma=1.0, alpha=0.1)
    side = math.exp(-0.5)
    w0, w1 = 1 / (1 + 2 * side), side / (1 + 2 * side)
    # 2·x - blur(x): the bump grows, its neighbours dip
    assert res[0, 2, 2, 0].item() == pytest.approx(0.7 - 0.1 * w0 * w0, abs=1e-6)
    assert res[0, 1, 2, 0].item() == pytest.approx(0.5 - 0.1 * w0 * w1, abs=1e-6)
    assert torch.equal(out(ImageSharpen, image=image, sharpen_radius=1, sigma=1.0,
                           alpha=0.0), image)


def test_sharpen_matches_comfyui_kernel_and_clamps():
    image = torch.rand(1, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    radius, sigma, alpha = 2, 0.7, 0.3
    kernel = comfy_kernel(radius, sigma) * -(alpha * 10)
    kernel[radius, radius] += 1 - kernel.sum()
    expected = conv_reference(image, kernel, radius).clamp(0, 1)
    res = out(ImageSharpen, image=image, sharpen_radius=radius, sigma=sigma, alpha=alpha)
    assert torch.allclose(res, expected, atol=1e-5)
    assert res.min() >= 0 and res.max() <= 1


# --- ImageQuantize -----------------------------------------------------------------------


def colours(image: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(p) for p in image.reshape(-1, image.shape[-1]).tolist()}


def test_quantize_keeps_an_image_of_few_colours():
    image = grey([[0, 1], [1, 0]])
    image[0, 0, 1] = t([1, 0, 0])
    for dither in ("none", "floyd-steinberg"):
        assert torch.equal(out(ImageQuantize, image=image, colors=256, dither=dither), image)


@pytest.mark.parametrize("dither", ["none", "floyd-steinberg", "bayer-2", "bayer-4",
                                    "bayer-8", "bayer-16"])
def test_quantize_to_two_colours(dither):
    ramp = torch.linspace(0, 1, 16).repeat(16, 1)  # 16 x 16, dark left, light right
    res = out(ImageQuantize, image=grey(ramp.tolist()), colors=2, dither=dither)
    found = colours(res)
    assert len(found) == 2 and all(len(set(c)) == 1 for c in found)  # two greys
    dark, light = sorted(c[0] for c in found)
    assert dark < 0.5 < light
    if dither == "none":  # the nearest of the two: a single switch along each row
        assert torch.equal(res[0, :, :4, 0], torch.full((16, 4), dark))
        assert torch.equal(res[0, :, -4:, 0], torch.full((16, 4), light))
        assert (res[0, 0, 1:, 0] >= res[0, 0, :-1, 0]).all()
    # dithering keeps the average brightness near the ramp's 0.5
    assert abs(res.mean().item() - 0.5) < 0.15


def test_quantize_keeps_alpha_and_grey():
    rgba = torch.rand(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    res = out(ImageQuantize, image=rgba, colors=3, dither="none")
    assert res.shape == rgba.shape and torch.equal(res[..., 3], rgba[..., 3])
    assert all(len(colours(res[i, ..., :3])) <= 3 for i in range(2))  # a palette each
    mono = torch.rand(1, 4, 4, 1, generator=torch.Generator().manual_seed(2))
    res = out(ImageQuantize, image=mono, colors=2, dither="floyd-steinberg")
    assert res.shape == (1, 4, 4, 1) and len(colours(res)) <= 2


def test_bayer_matrix():
    assert bayer_matrix(2) == [[-0.375, 0.125], [0.375, -0.125]]
    m2, m4 = bayer_matrix(2), bayer_matrix(4)
    step = [[-1.5, 0.5], [1.5, -0.5]]  # each 2 x 2 quadrant is m2 shifted by step / 16
    for y in range(4):
        for x in range(4):
            assert m4[y][x] == pytest.approx(m2[y % 2][x % 2] + step[y // 2][x // 2] / 16)
    values = sorted(v for row in bayer_matrix(16) for v in row)
    assert values == pytest.approx([(k + 0.5) / 256 - 0.5 for k in range(256)])


# --- ImageCrop, ImageFlip, ImageRotate ---------------------------------------------------


def test_crop_and_its_edges():
    image = numbered(2, 4, 5, 1)
    crop = out(ImageCrop, image=image, width=2, height=2, x=1, y=1)
    assert torch.equal(crop[..., 0], image[:, 1:3, 1:3, 0])
    crop = out(ImageCrop, image=image, width=512, height=512, x=3, y=2)  # cut at the edges
    assert torch.equal(crop, image[:, 2:, 3:])
    # a corner past the image moves to its last row / column (ComfyUI's)
    assert torch.equal(out(ImageCrop, image=image, width=2, height=2, x=9, y=0),
                       image[:, :2, 4:])
    assert torch.equal(out(ImageCrop, image=image, width=9, height=9, x=0, y=100),
                       image[:, 3:])
    crop[...] = -1  # a copy, not a view
    assert image.min() == 0


def test_flip():
    image = numbered(1, 2, 3, 1)[..., 0]  # [[0, 1, 2], [3, 4, 5]]
    flip = lambda m: out(ImageFlip, image=image[..., None], flip_method=m)[..., 0]  # noqa: E731
    assert torch.equal(flip("x-axis: vertically"), t([[[3, 4, 5], [0, 1, 2]]]))
    assert torch.equal(flip("y-axis: horizontally"), t([[[2, 1, 0], [5, 4, 3]]]))


def test_rotate_clockwise():
    image = numbered(1, 2, 3, 1)  # [[0, 1, 2], [3, 4, 5]]
    turn = lambda r: out(ImageRotate, image=image, rotation=r)[..., 0]  # noqa: E731
    assert torch.equal(turn("none"), image[..., 0])
    assert torch.equal(turn("90 degrees"), t([[[3, 0], [4, 1], [5, 2]]]))
    assert torch.equal(turn("180 degrees"), t([[[5, 4, 3], [2, 1, 0]]]))
    assert torch.equal(turn("270 degrees"), t([[[2, 5], [1, 4], [0, 3]]]))


# --- RepeatImageBatch, ImageFromBatch, GetImageSize --------------------------------------


def test_repeat_image_batch():
    image = numbered(2, 1, 1, 1)
    assert out(RepeatImageBatch, image=image, amount=3)[:, 0, 0, 0].tolist() == [
        0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize(("index", "length", "expected"), [
    (0, 1, [0]), (1, 2, [1, 2]), (2, 10, [2, 3]), (-1, 1, [3]), (-3, 2, [1, 2]),
    (4, 1, [3]), (16384, 5, [3]), (-5, 2, [0, 1]), (-16384, 4096, [0, 1, 2, 3]),
])
def test_image_from_batch(index, length, expected):
    image = numbered(4, 1, 1, 1)
    res = out(ImageFromBatch, image=image, batch_index=index, length=length)
    assert res[:, 0, 0, 0].tolist() == expected


def test_get_image_size():
    node = GetImageSize(image=torch.zeros(3, 5, 7, 3))
    assert node.execute(None) == (7, 5, 3)


# --- bad inputs --------------------------------------------------------------------------

CALLS = [
    (ImageInvert, {}), (ImageBlur, {"blur_radius": 1, "sigma": 1.0}),
    (ImageSharpen, {"sharpen_radius": 1, "sigma": 1.0, "alpha": 1.0}),
    (ImageQuantize, {"colors": 2, "dither": "none"}),
    (ImageCrop, {"width": 1, "height": 1, "x": 0, "y": 0}),
    (ImageFlip, {"flip_method": "x-axis: vertically"}), (ImageRotate, {"rotation": "none"}),
    (RepeatImageBatch, {"amount": 2}), (ImageFromBatch, {"batch_index": 0, "length": 1}),
    (GetImageSize, {}),
]


@pytest.mark.parametrize(("cls", "inputs"), CALLS, ids=[c.TYPE for c, _ in CALLS])
@pytest.mark.parametrize("shape", [(2, 2, 3), (1, 2, 2, 2), (0, 2, 2, 3), (1, 0, 2, 3)])
def test_bad_images(cls, inputs, shape):
    with pytest.raises(ValueError, match="image"):
        cls(image=torch.zeros(shape), **inputs).execute(None)


def test_blend_bad_images():
    good = torch.zeros(1, 2, 2, 3)
    with pytest.raises(ValueError, match="image1"):
        out(ImageBlend, image1=torch.zeros(2, 2, 3), image2=good, blend_factor=0.5,
            blend_mode="normal")
    with pytest.raises(ValueError, match="image2"):
        out(ImageBlend, image1=good, image2=torch.zeros(1, 0, 2, 3), blend_factor=0.5,
            blend_mode="normal")


# --- through a session: an API-format prompt with these class types ----------------------


def prompt() -> dict:
    return {
        "red": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 6,
                                                       "batch_size": 1, "color": 0xFF0000}},
        "grey": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4,
                                                        "batch_size": 2, "color": 0x808080}},
        "cyan": {"class_type": "ImageInvert", "inputs": {"image": ["red", 0]}},
        "mix": {"class_type": "ImageBlend", "inputs": {
            "image1": ["cyan", 0], "image2": ["grey", 0], "blend_factor": 1.0,
            "blend_mode": "multiply"}},
        "blur": {"class_type": "ImageBlur", "inputs": {"image": ["mix", 0],
                                                       "blur_radius": 2, "sigma": 1.0}},
        "sharp": {"class_type": "ImageSharpen", "inputs": {
            "image": ["blur", 0], "sharpen_radius": 1, "sigma": 1.0, "alpha": 1.0}},
        "crop": {"class_type": "ImageCrop", "inputs": {"image": ["sharp", 0], "width": 4,
                                                       "height": 6, "x": 2, "y": 0}},
        "rep": {"class_type": "RepeatImageBatch", "inputs": {"image": ["crop", 0],
                                                             "amount": 3}},
        "pick": {"class_type": "ImageFromBatch", "inputs": {"image": ["rep", 0],
                                                            "batch_index": -2, "length": 5}},
        "turn": {"class_type": "ImageRotate", "inputs": {"image": ["pick", 0],
                                                         "rotation": "90 degrees"}},
        "flip": {"class_type": "ImageFlip", "inputs": {"image": ["turn", 0],
                                                       "flip_method": "y-axis: horizontally"}},
        "quant": {"class_type": "ImageQuantize", "inputs": {"image": ["flip", 0],
                                                            "colors": 4,
                                                            "dither": "floyd-steinberg"}},
        "size": {"class_type": "GetImageSize", "inputs": {"image": ["quant", 0]}},
        "c_img": {"class_type": "TestCapture", "inputs": {"value": ["quant", 0],
                                                          "key": "image_ops_img"}},
        "c_w": {"class_type": "TestCapture", "inputs": {"value": ["size", 0],
                                                        "key": "image_ops_w"}},
        "c_h": {"class_type": "TestCapture", "inputs": {"value": ["size", 1],
                                                        "key": "image_ops_h"}},
        "c_b": {"class_type": "TestCapture", "inputs": {"value": ["size", 2],
                                                        "key": "image_ops_b"}},
    }


def test_api_prompt_validates_and_runs(session):
    graph = prompt()
    session.validate(graph)
    result = session.run(graph)
    assert result.ok, result.run.error
    image = CAPTURED.pop("image_ops_img")
    # cyan x 128/255 grey, flat all along (blur, sharpen and quantize keep it), 2 images
    # of 4x6 cropped, 3 x 2 repeated, the last 2 picked, turned to 6x4
    assert image.shape == (2, 4, 6, 3)
    assert torch.allclose(image, t([0, 128 / 255, 128 / 255]).expand(2, 4, 6, 3), atol=1e-6)
    sizes = [CAPTURED.pop(f"image_ops_{k}") for k in "whb"]
    assert sizes == [6, 4, 2]


def test_bad_values_are_validation_or_run_errors(session):
    graph = prompt()
    graph["turn"]["inputs"]["rotation"] = "45 degrees"
    with pytest.raises(PromptValidationError):
        session.validate(graph)
    graph = prompt()
    graph["blur"]["inputs"]["blur_radius"] = 32
    with pytest.raises(PromptValidationError):
        session.validate(graph)
    graph = prompt()
    graph["red"]["inputs"]["batch_size"] = 3  # 3 under 2: neither is 1
    assert "batches do not match" in run_error(session, graph)


def test_image_add_noise_is_seeded_and_clamped():
    from nodes.image_ops import ImageAddNoise

    image = torch.full((2, 3, 4, 3), 0.5)
    a = ImageAddNoise(image=image, seed=3, strength=0.2).execute(None)[0]
    b = ImageAddNoise(image=image, seed=3, strength=0.2).execute(None)[0]
    expected = (0.5 + 0.2 * torch.randn((2, 3, 4, 3), generator=torch.Generator().manual_seed(3)))
    assert torch.equal(a, b) and torch.allclose(a, expected.clamp(0, 1))
    assert ImageAddNoise(image=image, seed=3, strength=0.0).execute(None)[0].equal(image)
    with pytest.raises(ValueError):
        ImageAddNoise(image=torch.zeros(3, 4, 3), seed=0, strength=0.5).execute(None)
