"""Load Image / Load Image (as Mask) / Load Image Batch on deep grey files (16-bit PNG,
32-bit integer and float TIFF: their levels kept, not clipped to white) and on animated
files (every frame of the first one's size as a batch, as ComfyUI)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from engine.session import Session
from tests.graph_nodes import CAPTURED, registry_with_capture

RAMP = np.linspace(0, 1, 64, dtype=np.float64)[None].repeat(8, axis=0)  # [8, 64]


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Session:
    home = tmp_path_factory.mktemp("home")
    (home / "input").mkdir()
    session = Session(home, device="cpu", registry=registry_with_capture())
    folder = home / "input"
    Image.fromarray((RAMP * 255).round().astype(np.uint8)).save(folder / "ramp8.png")
    Image.fromarray((RAMP * 65535).round().astype(np.uint16)).save(folder / "ramp16.png")
    Image.fromarray((RAMP * 65535).round().astype(np.int32), mode="I").save(folder / "ramp32.tif")
    Image.fromarray(RAMP.astype(np.float32), mode="F").save(folder / "rampf.tif")
    Image.fromarray((RAMP * 255).astype(np.float32), mode="F").save(folder / "rampf255.tif")
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    still = [Image.new("RGB", (24, 16), c) for c in colours]
    still[0].save(folder / "rgb3.gif", save_all=True, append_images=still[1:], duration=50)
    still[0].save(folder / "rgb3.png", save_all=True, append_images=still[1:], duration=50)
    alpha = [Image.new("RGBA", (24, 16), (*c, 64 * (k + 1))) for k, c in enumerate(colours)]
    alpha[0].save(folder / "rgba3.png", save_all=True, append_images=alpha[1:], duration=50)
    return session


def run(session: Session, node: dict, outputs: int = 1) -> list[torch.Tensor]:
    key = uuid.uuid4().hex
    prompt = {"l": node, **{f"c{k}": {"class_type": "TestCapture",
                                      "inputs": {"value": ["l", k], "key": f"{key}{k}"}}
                            for k in range(outputs)}}
    result = session.run(prompt)
    assert result.ok, result.run.error
    return [CAPTURED.pop(f"{key}{k}") for k in range(outputs)]


@pytest.mark.parametrize("name", ["ramp8.png", "ramp16.png", "ramp32.tif", "rampf.tif",
                                  "rampf255.tif"])
def test_deep_grey_files_keep_their_levels(session: Session, name: str):
    image, mask = run(session, {"class_type": "LoadImage", "inputs": {"image": name}}, 2)
    assert image.shape == (1, 8, 64, 3) and mask.shape == (1, 8, 64)
    expected = torch.from_numpy(RAMP).float()
    tolerance = 0.5 / 255 if name in ("ramp8.png", "rampf255.tif") else 1e-4
    assert (image[0, ..., 1] - expected).abs().max() <= tolerance
    assert (image[0, ..., 0] == image[0, ..., 2]).all() and mask.abs().max() == 0
    (red,) = run(session, {"class_type": "LoadImageMask",
                           "inputs": {"image": name, "channel": "red"}})
    assert (red[0] - expected).abs().max() <= tolerance


def test_load_image_batch_scales_deep_grey_levels(session: Session):
    image, _mask, _captions = run(session, {"class_type": "LoadImageBatch", "inputs": {
        "folder": "", "images": "ramp16.png", "size": "resize",
        "caption_template": "x"}}, 3)
    assert (image[0, ..., 0] - torch.from_numpy(RAMP).float()).abs().max() <= 0.5 / 255


@pytest.mark.parametrize("name", ["rgb3.gif", "rgb3.png"])
def test_animated_files_load_every_frame_as_a_batch(session: Session, name: str):
    image, mask = run(session, {"class_type": "LoadImage", "inputs": {"image": name}}, 2)
    assert image.shape == (3, 16, 24, 3) and mask.shape == (3, 16, 24)
    assert image[:, 0, 0].round().tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_animated_frames_keep_their_alpha_as_masks(session: Session):
    _image, mask = run(session, {"class_type": "LoadImage", "inputs": {"image": "rgba3.png"}}, 2)
    assert mask.shape == (3, 16, 24)
    assert [round(float(m), 2) for m in mask[:, 0, 0]] == [round(1 - 64 * k / 255, 2)
                                                            for k in (1, 2, 3)]


def test_frames_of_another_size_are_skipped(session: Session):
    folder = session.env.folder("input")
    first, other = Image.new("RGB", (24, 16), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    # a multi-page TIFF's pages keep their own sizes (a GIF's frames share its canvas)
    first.save(folder / "mixed.tif", save_all=True, append_images=[other, first.copy()])
    image, _mask = run(session, {"class_type": "LoadImage", "inputs": {"image": "mixed.tif"}}, 2)
    assert image.shape == (2, 16, 24, 3)
