"""The utility nodes (Crop Image, Crop Image to Mask, the tile nodes, LatentCutToBatch,
Get Latent Size, Custom Combo, Create List, Color Picker) fed extreme but in-bounds
inputs: each gives a result or a clear ValueError, never a raw torch error."""

from __future__ import annotations

import pytest
import torch

from nodes import utility_nodes
from nodes.bounding_boxes import ImageCropToMask, crop
from nodes.diffusion.handles import Latent
from nodes.image_tiles import ImageMergeTileList, SplitImageToTileList
from nodes.primitives import MAX_STRING_CHARS
from nodes.utility_nodes import (
    ColorToRGBInt,
    CreateList,
    CustomCombo,
    GetLatentSize,
    LatentCutToBatch,
)


def test_crop_of_a_one_pixel_image_with_the_largest_region():
    image = torch.rand(2, 1, 1, 4)
    box = {"x": 16384, "y": 16384, "width": 16384, "height": 16384}
    assert torch.equal(crop(image, box), image)


@pytest.mark.parametrize(("width", "height"), [(64, 4096), (4096, 64), (64, 64)])
@pytest.mark.parametrize("grow", [-32, 0, 32])
def test_crop_to_mask_of_a_one_pixel_image(width, height, grow):
    out = ImageCropToMask(images=torch.rand(1, 1, 1, 1), masks=torch.ones(1, 1),
                          width=width, height=height, pad_factor=2.0, grow_mask=grow,
                          background="#123456").execute(None)[0]
    assert out.shape == (1, height, width, 3) and bool(out.isfinite().all())


def test_crop_to_mask_of_thin_images_and_masks():
    out = ImageCropToMask(images=torch.rand(3, 2, 300, 3), masks=torch.rand(1, 7, 3),
                          width=64, height=64, pad_factor=1.5, grow_mask=5,
                          background="#ffffff").execute(None)[0]
    assert out.shape == (3, 64, 64, 3) and float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ValueError, match="mask"):
        ImageCropToMask(images=torch.rand(1, 8, 8, 3), masks=torch.rand(1, 2, 8, 8),
                        width=64, height=64, pad_factor=1.0, grow_mask=0,
                        background="#000000").execute(None)


def test_tiles_of_images_smaller_than_a_tile_and_tiles_larger_than_the_result():
    (tiles,) = SplitImageToTileList(image=torch.rand(1, 1, 1, 3), tile_width=64,
                                    tile_height=64, overlap=4096).execute(None)
    assert [tuple(t.shape) for t in tiles] == [(1, 1, 1, 3)]
    merge = ImageMergeTileList.model_construct
    (out,) = merge(image_list=tiles, final_width=[64], final_height=[64],
                   overlap=[4096]).execute(None)
    assert out.shape == (1, 64, 64, 3) and torch.allclose(out[0, 0, 0], tiles[0][0, 0, 0])
    big = torch.rand(2, 200, 300, 1)
    (out,) = merge(image_list=[big], final_width=[64], final_height=[64],
                   overlap=[0]).execute(None)
    assert torch.equal(out, big[:, :64, :64])
    with pytest.raises(ValueError, match="image_list is empty"):
        merge(image_list=[], final_width=[64], final_height=[64], overlap=[0]).execute(None)
    with pytest.raises(ValueError, match="tile"):
        merge(image_list=[torch.rand(64, 64)], final_width=[64], final_height=[64],
              overlap=[0]).execute(None)


def test_latent_cut_of_one_pixel_latents():
    latent = Latent(torch.rand(3, 4, 1, 1))
    for dim in ("x", "y", "t"):
        out = LatentCutToBatch(samples=latent, dim=dim, slice_size=16384).execute(None)[0]
        assert torch.equal(out.samples, latent.samples)
    with pytest.raises(ValueError, match="video latents"):
        LatentCutToBatch(samples=Latent(torch.rand(1, 4, 2, 2, 2)), dim="x",
                         slice_size=1).execute(None)
    with pytest.raises(ValueError, match="must be a LATENT"):
        GetLatentSize.model_construct(latent=torch.rand(1, 4, 8, 8)).execute(None)
    with pytest.raises(ValueError, match="must be a LATENT"):
        GetLatentSize(latent=Latent(torch.rand(0, 4, 8, 8))).execute(None)


def test_text_and_list_bounds(monkeypatch):
    node = CustomCombo.model_construct(choice="x" * (MAX_STRING_CHARS + 1))
    with pytest.raises(ValueError, match="the most is"):
        node.execute(None)
    assert CustomCombo.model_construct(choice="").execute(None) == ("", 0)
    monkeypatch.setattr(utility_nodes, "MAX_LIST_ITEMS", 3)
    node = CreateList.model_construct(**{"inputs.input0": [1, 2], "inputs.input1": [3, 4]})
    with pytest.raises(ValueError, match="more than 3 items"):
        node.execute(None)
    assert ColorToRGBInt(color="#000000").execute(None) == (0, "#000000", 1.0)
    assert ColorToRGBInt(color="#FFFFFF00").execute(None) == (0xFFFFFF, "#FFFFFF", 0.0)
