"""Regressions found by fuzzing today's node modules with extreme but in-bounds inputs:
each must give a result or a clear ValueError, never a raw torch error or wasted work."""

from __future__ import annotations

import pytest
import torch

from nodes import image_compose
from nodes.diffusion.handles import Latent
from nodes.diffusion.resize import center_crop
from nodes.image_compose import ImageStitch, PorterDuffImageComposite
from nodes.image_ops import ImageBlend
from nodes.latent_ops import LatentAdd, LatentBatch, LatentBlend


def out(cls, **inputs):
    return cls(**inputs).execute(None)[0]


def test_the_centre_crop_keeps_a_pixel():
    # common_upscale's centre crop of a 4 px side to a 1:7 aspect left 0 px
    assert center_crop(torch.rand(1, 3, 4, 4), 1, 7).shape == (1, 3, 4, 2)
    assert center_crop(torch.rand(1, 3, 8, 8), 8, 1).shape == (1, 3, 2, 8)
    assert center_crop(torch.rand(1, 3, 1, 9), 1, 5).shape == (1, 3, 1, 1)
    assert center_crop(torch.rand(1, 3, 4, 6), 6, 4).shape == (1, 3, 4, 6)


def test_blend_onto_a_thin_image():
    image1 = torch.rand(1, 7, 1, 4)
    result = out(ImageBlend, image1=image1, image2=torch.rand(1, 4, 4, 4), blend_factor=0.5,
                 blend_mode="overlay")
    assert result.shape == (1, 7, 1, 4) and bool(result.isfinite().all())


def test_porter_duff_onto_a_thin_destination():
    image, alpha = PorterDuffImageComposite(
        source=torch.rand(2, 4, 4, 4), source_alpha=torch.rand(1, 1, 1),
        destination=torch.rand(1, 7, 1, 4), destination_alpha=torch.rand(3, 3),
        mode="SRC_OVER").execute(None)
    assert image.shape == (2, 7, 1, 4) and alpha.shape == (2, 7, 1)


@pytest.mark.parametrize("cls", [LatentAdd, LatentBlend, LatentBatch])
def test_latent_fit_to_a_thin_latent(cls):
    result = out(cls, samples1=Latent(torch.randn(1, 4, 1, 8)),
                 samples2=Latent(torch.randn(1, 4, 8, 8)))
    assert result.samples.shape[1:] == (4, 1, 8)
    assert bool(result.samples.isfinite().all())


def test_stitch_too_large_is_refused_before_resizing(monkeypatch):
    def no_resize(*args, **kwargs):
        raise AssertionError("image2 was resized before the result was checked")

    monkeypatch.setattr(image_compose, "resize", no_resize)
    with pytest.raises(ValueError, match="past the maximum"):
        out(ImageStitch, image1=torch.rand(1, 16384, 1, 3), image2=torch.rand(1, 2, 2, 3),
            direction="right", match_image_size=True, spacing_width=0,
            spacing_color="white")


def test_preview_any_of_a_deeply_nested_list():
    from nodes.primitives import PreviewAny

    value: list = []
    inner = value
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]
    assert PreviewAny(source=value).execute(None).ui == {
        "text": ["(list nested too deeply to show)"]}
    assert PreviewAny(source=[1, {"a": 2}]).execute(None).ui["text"][0].startswith("[")


@pytest.mark.parametrize(("ratio", "megapixels", "multiple", "minimum", "expected"), [
    ("1:1 (Square)", 1.0, 8, 256, (1024, 1024)),
    ("16:9 (Widescreen)", 1.0, 8, 256, (1368, 768)),
    ("2:3 (Portrait Photo)", 1.0, 8, 256, (840, 1256)),
    ("3:2 (Photo)", 0.01, 8, 256, (384, 256)),  # below the minimum: the smallest fit
    ("1:1 (Square)", 0.004, 8, 32, (64, 64)),  # the default model's size
])
def test_resolution_selector(ratio, megapixels, multiple, minimum, expected, tmp_path):
    from engine.session import Session

    session = Session(tmp_path, device="cpu")
    result = session.run({
        "1": {"class_type": "ResolutionSelector", "inputs": {
            "aspect_ratio": ratio, "megapixels": megapixels, "multiple": multiple,
            "minimum": minimum}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}})
    assert result.ok, result.run.error
    width, height = (int(result.run.outputs[k]["text"][0]) for k in ("2", "3"))
    assert (width, height) == expected
    assert width % multiple == 0 and height % multiple == 0


def _grow(node_type: str, group: str, prefix: str, values: list) -> tuple:
    from engine.registry import default_registry

    cls = default_registry().get(node_type)
    node = cls.model_construct(**{f"{group}.{prefix}{k}": v for k, v in enumerate(values)})
    return node.execute(None)


def test_batch_images_node_fits_every_image_to_the_first():
    first = torch.rand(2, 32, 48, 3)
    wide = torch.rand(1, 20, 80, 4)  # another aspect, and an alpha channel
    (out,) = _grow("BatchImagesNode", "images", "image", [first, wide, first[:1]])
    assert out.shape == (4, 32, 48, 4)
    assert torch.equal(out[:2, ..., :3], first) and torch.all(out[:2, ..., 3] == 1.0)
    assert torch.equal(out[3, ..., :3], first[0])


def test_batch_masks_and_latents_nodes():
    from nodes.diffusion.handles import Latent

    (masks,) = _grow("BatchMasksNode", "masks", "mask",
                     [torch.ones(1, 16, 16), torch.zeros(2, 8, 32), torch.ones(16, 16)])
    assert masks.shape == (4, 16, 16) and masks[1:3].max() == 0 and masks[3].min() == 1
    a, b = Latent(torch.zeros(1, 4, 8, 8)), Latent(torch.ones(2, 4, 4, 4))
    (latent,) = _grow("BatchLatentsNode", "latents", "latent", [a, b, a])
    assert latent.samples.shape == (4, 4, 8, 8) and latent.samples[1:3].min() == 1


def test_batch_images_node_from_a_comfyui_file():
    """ComfyUI's front end now replaces Image Batch by Batch Images, whose inputs are
    named ``images.image0`` ... in its files: they convert as links."""
    from engine.comfy_workflow import RegistrySchemas, convert_ui_workflow
    from engine.registry import default_registry

    ui = {"nodes": [
        {"id": 1, "type": "LoadImage", "pos": [0, 0], "widgets_values": ["a.png", "image"],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1, 2]}]},
        {"id": 2, "type": "BatchImagesNode", "pos": [300, 0],
         "inputs": [{"name": "images.image0", "type": "IMAGE", "link": 1},
                    {"name": "images.image1", "type": "IMAGE", "link": 2},
                    {"name": "images.image2", "type": "IMAGE", "link": None}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}]}],
          "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 1, 0, 2, 1, "IMAGE"]]}
    result = convert_ui_workflow(ui, RegistrySchemas(default_registry()))
    assert result.warnings == []
    assert result.prompt["2"]["inputs"] == {"images.image0": ["1", 0],
                                            "images.image1": ["1", 0]}


def test_image_batch_is_comfyuis_two_image_batch():
    """Image Batch shares Batch Images' joining: the second fitted with a centre crop, an
    RGB one given alpha beside RGBA (it used to stretch, and refuse mixed channels)."""
    from engine.registry import default_registry

    cls = default_registry().get("ImageBatch")
    first, second = torch.rand(1, 16, 16, 4), torch.rand(1, 16, 32, 3)
    (out,) = cls.model_construct(image1=first, image2=second).execute(None)
    assert out.shape == (2, 16, 16, 4) and torch.all(out[1, ..., 3] == 1.0)
    # the middle 16 columns of the wide image, unscaled
    assert torch.allclose(out[1, ..., :3], second[0, :, 8:24])
