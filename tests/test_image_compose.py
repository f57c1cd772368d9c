"""Scale Image to Max Dimension, Resize And Pad, Stitch, Morphology, Split / Join Image
with Alpha and Porter-Duff Image Composite (nodes/image_compose.py), each checked against
hand computations on small tensors."""

from __future__ import annotations

import pytest
import torch

from engine.validation import PromptValidationError
from nodes.image_compose import (
    PORTER_DUFF,
    ImageScaleToMaxDimension,
    ImageStitch,
    JoinImageWithAlpha,
    Morphology,
    PorterDuffImageComposite,
    ResizeAndPadImage,
    SplitImageWithAlpha,
)
from tests.graph_nodes import CAPTURED, run_error


def run(cls, **inputs):
    return cls(**inputs).execute(None)


def out(cls, **inputs):
    return run(cls, **inputs)[0]


def flat(h, w, color, batch=1) -> torch.Tensor:
    return torch.tensor(color, dtype=torch.float32).expand(batch, h, w, len(color)).clone()


def numbered(batch=1, h=2, w=3, c=3) -> torch.Tensor:
    return torch.arange(batch * h * w * c, dtype=torch.float32).view(batch, h, w, c) / 100


# --- ImageScaleToMaxDimension -------------------------------------------------------------


@pytest.mark.parametrize(("h", "w", "size", "expected"), [
    (4, 2, 8, (8, 4)), (2, 8, 4, (1, 4)), (3, 3, 5, (5, 5)), (1, 100, 10, (1, 10)),
    (3, 7, 5, (2, 5)),  # round(3 / 7 * 5) = round(2.14)
])
def test_scale_to_max_dimension_sizes(h, w, size, expected):
    image = out(ImageScaleToMaxDimension, image=numbered(h=h, w=w), upscale_method="bilinear",
                largest_size=size)
    assert image.shape == (1, *expected, 3)


def test_scale_to_max_dimension_values_and_zero():
    image = numbered(h=2, w=1)
    scaled = out(ImageScaleToMaxDimension, image=image, upscale_method="nearest-exact",
                 largest_size=4)
    assert torch.equal(scaled, image.repeat_interleave(2, 1).repeat_interleave(2, 2))
    with pytest.raises(ValueError, match="largest_size"):
        out(ImageScaleToMaxDimension, image=image, upscale_method="area", largest_size=0)
    with pytest.raises(ValueError, match="IMAGE"):
        out(ImageScaleToMaxDimension, image=image[0], upscale_method="area", largest_size=4)


# --- ResizeAndPadImage ------------------------------------------------------------------


def test_resize_and_pad_centres_on_the_padding():
    image = flat(2, 2, [0.5, 0.5, 0.5])
    wide = out(ResizeAndPadImage, image=image, target_width=4, target_height=2,
               padding_color="white", interpolation="nearest-exact")
    assert wide.shape == (1, 2, 4, 3)
    assert torch.equal(wide[0, 0, :, 0], torch.tensor([1.0, 0.5, 0.5, 1.0]))
    tall = out(ResizeAndPadImage, image=flat(1, 2, [0.5, 0.5, 0.5, 0.7]), target_width=2,
               target_height=4, padding_color="black", interpolation="area")
    assert tall.shape == (1, 4, 2, 4)  # scale 1, y offset (4 - 1) // 2 = 1
    assert torch.equal(tall[0, :, 0, 3], torch.tensor([0.0, 0.7, 0.0, 0.0]))


def test_resize_and_pad_scales_down_to_fit():
    image = numbered(h=4, w=4, c=1)
    padded = out(ResizeAndPadImage, image=image, target_width=2, target_height=3,
                 padding_color="black", interpolation="area")
    # scale min(2/4, 3/4) = 0.5: a 2x2 average-pooled image at y = (3 - 2) // 2 = 0
    pooled = torch.nn.functional.avg_pool2d(image.movedim(-1, 1), 2).movedim(1, -1)
    assert padded.shape == (1, 3, 2, 1)
    assert torch.allclose(padded[:, :2], pooled)
    assert torch.equal(padded[:, 2], torch.zeros(1, 2, 1))


# --- ImageStitch ------------------------------------------------------------------------

BASE = {"match_image_size": False, "spacing_width": 0, "spacing_color": "white"}


@pytest.mark.parametrize(("direction", "first"), [("right", 0.0), ("left", 1.0)])
def test_stitch_across(direction, first):
    a, b = flat(2, 2, [0.0] * 3), flat(2, 3, [1.0] * 3)
    image = out(ImageStitch, image1=a, image2=b, **{**BASE, "direction": direction})
    assert image.shape == (1, 2, 5, 3)
    assert float(image[0, 0, 0, 0]) == first and float(image[0, 0, -1, 0]) == 1 - first


def test_stitch_down_pads_the_narrower_and_adds_spacing():
    a, b = flat(2, 2, [0.0] * 3), flat(1, 3, [0.5] * 3)
    image = out(ImageStitch, image1=a, image2=b, direction="down", match_image_size=False,
                spacing_width=1, spacing_color="red")
    assert image.shape == (1, 5, 3, 3)  # 2 + 2 (spacing 1 made even) + 1 rows
    # image1 padded right by 1 (0 left, 1 right) in black: red spacing pads in black
    assert torch.equal(image[0, :2, :, 0], torch.zeros(2, 3))
    assert torch.equal(image[0, 2:4], flat(2, 3, [1.0, 0.0, 0.0])[0])
    assert torch.equal(image[0, 4], flat(1, 3, [0.5] * 3)[0, 0])
    white = out(ImageStitch, image1=a, image2=b, direction="up", **{**BASE})
    assert torch.equal(white[0, 1:, :, 0], torch.tensor([[0.0, 0.0, 1.0]] * 2))


def test_stitch_matches_size_batch_and_channels():
    a = flat(2, 2, [0.2])  # grey
    b = flat(1, 2, [0.25, 0.25, 0.25, 0.5], batch=3)
    image = out(ImageStitch, image1=a, image2=b, direction="right", match_image_size=True,
                spacing_width=0, spacing_color="white")
    # image2 resized (lanczos, via 8 bits) to height 2, width int(2 * 2 / 1) = 4
    assert image.shape == (3, 2, 6, 4)
    assert torch.allclose(image[:, :, :2], flat(2, 2, [0.2, 0.2, 0.2, 1.0], batch=3))
    assert torch.allclose(image[:, :, 2:], flat(2, 4, [0.25, 0.25, 0.25, 0.5], batch=3),
                          atol=2 / 255)  # 8-bit truncation, then PIL rounding
    assert out(ImageStitch, image1=a, image2=None, direction="up", **BASE) is a
    with pytest.raises(ValueError, match="image2"):
        out(ImageStitch, image1=a, image2=flat(2, 2, [0.0, 0.0]), direction="up", **BASE)


# --- Morphology -------------------------------------------------------------------------


def reference(image: torch.Tensor, op: str, k: int) -> torch.Tensor:
    """Pixel by pixel: the max or min over the k x k window rows/cols [i - k//2,
    i - k//2 + k - 1] that lie inside the image."""
    def pool(x, fn):
        h, w = x.shape[1:3]
        y = torch.empty_like(x)
        for i in range(h):
            for j in range(w):
                win = x[:, max(0, i - k // 2):i - k // 2 + k, max(0, j - k // 2):j - k // 2 + k]
                y[:, i, j] = fn(win.flatten(1, 2), dim=1).values
        return y

    dil, ero = (lambda x: pool(x, torch.max)), (lambda x: pool(x, torch.min))
    return {"erode": ero, "dilate": dil, "open": lambda x: dil(ero(x)),
            "close": lambda x: ero(dil(x)), "gradient": lambda x: dil(x) - ero(x),
            "top_hat": lambda x: x - dil(ero(x)), "bottom_hat": lambda x: ero(dil(x)) - x,
            }[op](image)


@pytest.mark.parametrize("k", [3, 4, 5])
@pytest.mark.parametrize("op", ["erode", "dilate", "open", "close", "gradient", "bottom_hat",
                                "top_hat"])
def test_morphology_matches_windowed_min_max(op, k):
    image = torch.rand(2, 5, 6, 3, generator=torch.Generator().manual_seed(k))
    result = out(Morphology, image=image, operation=op, kernel_size=k)
    assert torch.allclose(result, reference(image, op, k), atol=1e-6)


def test_morphology_by_hand():
    speck = torch.zeros(1, 5, 5, 1)
    speck[0, 2, 2] = 1.0
    block = torch.zeros(1, 5, 5, 1)
    block[0, 1:4, 1:4] = 1.0
    assert torch.equal(out(Morphology, image=speck, operation="dilate", kernel_size=3), block)
    assert torch.equal(out(Morphology, image=speck, operation="open", kernel_size=3),
                       torch.zeros_like(speck))
    assert torch.equal(out(Morphology, image=speck, operation="top_hat", kernel_size=3), speck)
    assert torch.equal(out(Morphology, image=1 - speck, operation="close", kernel_size=3),
                       torch.ones_like(speck))
    # edges: pixels outside are ignored, so a white image stays white under erosion
    ones = torch.ones(1, 3, 3, 3)
    assert torch.equal(out(Morphology, image=ones, operation="erode", kernel_size=999), ones)
    even = out(Morphology, image=speck, operation="dilate", kernel_size=4)
    assert torch.equal(even[0, :, :, 0].nonzero()[:, 0].unique(), torch.tensor([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="IMAGE"):
        out(Morphology, image=torch.zeros(1, 3, 3, 2), operation="erode", kernel_size=3)


# --- Split / Join Image with Alpha ------------------------------------------------------


def test_split_image_with_alpha():
    rgba = flat(1, 2, [0.1, 0.2, 0.3, 0.75])
    image, mask = run(SplitImageWithAlpha, image=rgba)
    assert torch.equal(image, rgba[..., :3]) and torch.equal(mask, torch.full((1, 1, 2), 0.25))
    image, mask = run(SplitImageWithAlpha, image=flat(2, 1, [0.4]))
    assert torch.equal(image, flat(2, 1, [0.4] * 3))
    assert torch.equal(mask, torch.zeros(1, 2, 1))


def test_join_image_with_alpha():
    image = numbered(h=2, w=2, c=4)
    mask = torch.tensor([[[0.0, 0.25], [0.5, 1.0]]])
    joined = out(JoinImageWithAlpha, image=image, alpha=mask)
    assert torch.equal(joined[..., :3], image[..., :3])
    assert torch.equal(joined[..., 3], 1 - mask)
    resized = out(JoinImageWithAlpha, image=numbered(h=2, w=3), alpha=torch.full((2, 1, 1), 0.25))
    assert resized.shape == (2, 2, 3, 4)  # image batch 1 repeated to the mask's 2
    assert torch.allclose(resized[..., 3], torch.full((2, 2, 3), 0.75))
    with pytest.raises(ValueError, match="batches do not match"):
        out(JoinImageWithAlpha, image=numbered(batch=2), alpha=torch.zeros(3, 2, 3))
    with pytest.raises(ValueError, match="MASK"):
        out(JoinImageWithAlpha, image=numbered(), alpha=torch.zeros(1, 2, 2, 3, 1))


# --- PorterDuffImageComposite -----------------------------------------------------------

# src 0.5 with alpha 0.5 and dst 0.2 with alpha 1 (premultiplied): (colour, alpha)
MODES = {
    "ADD": (0.7, 1.0), "CLEAR": (0.0, 0.0), "DARKEN": (0.5 * 0.2 + 0.2, 1.0),
    "DST": (0.2, 1.0), "DST_ATOP": (0.5 * 0.2, 0.5), "DST_IN": (0.1, 0.5),
    "DST_OUT": (0.1, 0.5), "DST_OVER": (0.2, 1.0), "LIGHTEN": (0.1 + 0.5, 1.0),
    "MULTIPLY": (0.1, 0.5), "OVERLAY": (2 * 0.5 * 0.2, 1.0), "SCREEN": (0.6, 1.0),
    "SRC": (0.5, 0.5), "SRC_ATOP": (0.5 + 0.5 * 0.2, 1.0), "SRC_IN": (0.5, 0.5),
    "SRC_OUT": (0.0, 0.0), "SRC_OVER": (0.6, 1.0), "XOR": (0.1, 0.5),
}


@pytest.mark.parametrize("mode", PORTER_DUFF)
def test_porter_duff_modes(mode):
    image, alpha = run(PorterDuffImageComposite, source=flat(2, 2, [0.5] * 3),
                       source_alpha=torch.full((1, 2, 2), 0.5),
                       destination=flat(2, 2, [0.2] * 3),
                       destination_alpha=torch.ones(1, 2, 2), mode=mode)
    colour, a = MODES[mode]
    assert torch.allclose(image, torch.full((1, 2, 2, 3), colour), atol=1e-6)
    assert torch.allclose(alpha, torch.full((1, 2, 2), a), atol=1e-6)


def test_porter_duff_overlay_bright_branch_resize_and_batch():
    # dst 0.8: 2·dst >= da, so sa·da - 2(da - src)(sa - dst) = 0.5 - 2·0.5·(-0.3) = 0.8
    image, alpha = run(PorterDuffImageComposite, source=flat(1, 1, [0.5] * 3),
                       source_alpha=torch.full((1, 1, 1), 0.5),
                       destination=flat(3, 2, [0.8] * 3, batch=2),
                       destination_alpha=torch.ones(1, 4, 4), mode="OVERLAY")
    assert image.shape == (2, 3, 2, 3) and alpha.shape == (2, 3, 2)
    assert torch.allclose(image, torch.full_like(image, 0.8), atol=1e-6)
    assert torch.allclose(alpha, torch.ones_like(alpha), atol=1e-6)


def test_porter_duff_bad_inputs():
    base = {"source": flat(2, 2, [0.5] * 3), "source_alpha": torch.ones(1, 2, 2),
            "destination": flat(2, 2, [0.5] * 3), "destination_alpha": torch.ones(1, 2, 2),
            "mode": "SRC_OVER"}
    with pytest.raises(ValueError, match="channel"):
        run(PorterDuffImageComposite, **{**base, "source": flat(2, 2, [0.5] * 4)})
    with pytest.raises(ValueError, match="batches do not match"):
        run(PorterDuffImageComposite, **{**base, "source": flat(2, 2, [0.5] * 3, batch=2),
                                         "destination_alpha": torch.ones(3, 2, 2)})
    with pytest.raises(ValueError, match="source_alpha"):
        run(PorterDuffImageComposite, **{**base, "source_alpha": torch.ones(2)})


# --- through a session: an API-format prompt with these class types ----------------------


def prompt() -> dict:
    return {
        "red": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 4,
                                                       "batch_size": 1, "color": 0xFF0000}},
        "blue": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4,
                                                        "batch_size": 1, "color": 0x0000FF}},
        "max": {"class_type": "ImageScaleToMaxDimension", "inputs": {
            "image": ["red", 0], "upscale_method": "nearest-exact", "largest_size": 4}},
        "pad": {"class_type": "ResizeAndPadImage", "inputs": {
            "image": ["max", 0], "target_width": 4, "target_height": 4,
            "padding_color": "black", "interpolation": "nearest-exact"}},
        "grow": {"class_type": "Morphology", "inputs": {"image": ["pad", 0],
                                                        "operation": "dilate",
                                                        "kernel_size": 3}},
        "stitch": {"class_type": "ImageStitch", "inputs": {
            "image1": ["grow", 0], "image2": ["blue", 0], "direction": "right",
            "match_image_size": True, "spacing_width": 2, "spacing_color": "white"}},
        "split": {"class_type": "SplitImageWithAlpha", "inputs": {"image": ["stitch", 0]}},
        "join": {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["split", 0],
                                                                "alpha": ["split", 1]}},
        "half": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 10,
                                                       "height": 4}},
        "full": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 10,
                                                       "height": 4}},
        "pd": {"class_type": "PorterDuffImageComposite", "inputs": {
            "source": ["split", 0], "source_alpha": ["half", 0],
            "destination": ["split", 0], "destination_alpha": ["full", 0],
            "mode": "DST_OUT"}},
        "c_join": {"class_type": "TestCapture", "inputs": {"value": ["join", 0],
                                                           "key": "compose_join"}},
        "c_pd": {"class_type": "TestCapture", "inputs": {"value": ["pd", 0],
                                                         "key": "compose_pd"}},
        "c_pd_a": {"class_type": "TestCapture", "inputs": {"value": ["pd", 1],
                                                           "key": "compose_pd_alpha"}},
    }


def test_api_prompt_validates_and_runs(session):
    graph = prompt()
    session.validate(graph)
    result = session.run(graph)
    assert result.ok, result.run.error
    # red 8x4 -> 4x2 -> padded to 4x4 with black rows 0 and 3 -> dilated back to all red;
    # then 2 white columns and the 4x4 blue image; alpha 1 everywhere
    row = [[1, 0, 0]] * 4 + [[1, 1, 1]] * 2 + [[0, 0, 1]] * 4
    expected = torch.tensor(row, dtype=torch.float32).expand(1, 4, 10, 3)
    joined = CAPTURED.pop("compose_join")
    assert joined.shape == (1, 4, 10, 4)
    assert torch.equal(joined[..., :3], expected) and torch.equal(joined[..., 3],
                                                                  torch.ones(1, 4, 10))
    # DST_OUT: (1 - 0.5) · destination, alpha (1 - 0.5) · 1
    assert torch.allclose(CAPTURED.pop("compose_pd"), 0.5 * expected)
    assert torch.allclose(CAPTURED.pop("compose_pd_alpha"), torch.full((1, 4, 10), 0.5))


def test_bad_values_are_validation_or_run_errors(session):
    graph = prompt()
    graph["grow"]["inputs"]["kernel_size"] = 2
    with pytest.raises(PromptValidationError):
        session.validate(graph)
    graph = prompt()
    graph["pd"]["inputs"]["mode"] = "src_over"
    with pytest.raises(PromptValidationError):
        session.validate(graph)
    graph = prompt()
    graph["pd"]["inputs"]["destination"] = ["join", 0]  # RGBA under an RGB source
    assert "channel" in run_error(session, graph)
