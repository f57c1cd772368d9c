"""ComfyUI's dataset image-list and text-list nodes (nodes_dataset.py) called directly, each
against a hand computation (the folder nodes and prompts are in tests/test_datasets.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nodes import dataset_images
from nodes.dataset_images import (
    AdjustBrightness,
    AdjustContrast,
    CenterCropImages,
    ImageDeduplication,
    ImageGrid,
    MergeImageLists,
    NormalizeImages,
    RandomCropImages,
    ResizeImagesByLongerEdge,
    ResizeImagesByShorterEdge,
    ShuffleDataset,
    ShuffleImageTextDataset,
)
from nodes.dataset_text import (
    AddTextPrefix,
    AddTextSuffix,
    MergeTextLists,
    ReplaceText,
    StripWhitespace,
    TextToLowercase,
    TextToUppercase,
    TruncateText,
)


def solid(color, size=(4, 3)) -> torch.Tensor:
    """IMAGE [1, h, w, 3] of one colour (0..1 floats), size = (w, h)."""
    return torch.tensor(color, dtype=torch.float32).expand(1, size[1], size[0], 3).clone()


def call(cls, **inputs):
    """The outputs of a direct call; an INPUT_IS_LIST node gets its inputs as lists,
    unvalidated, as the engine calls it."""
    node = cls.model_construct(**inputs) if cls.INPUT_IS_LIST else cls(**inputs)
    return node.execute(None)


def out(cls, **inputs):
    return call(cls, **inputs)[0]

# --- per-image transforms ------------------------------------------------------------------

def pil_lanczos(image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """ComfyUI's resize written out: truncate to 8 bits, PIL Lanczos, back to 0..1."""
    arr = np.clip(image[0].numpy() * 255.0, 0, 255).astype(np.uint8)
    resized = Image.fromarray(arr).resize(size, Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.float32) / 255.0


def test_resize_by_shorter_edge():
    image = torch.rand(1, 20, 40, 3)  # h 20 < w 40: h → 10, w → int(40 * 10 / 20) = 20
    result = out(ResizeImagesByShorterEdge, images=image, shorter_edge=10)
    assert result.shape == (1, 10, 20, 3)
    np.testing.assert_allclose(result[0].numpy(), pil_lanczos(image, (20, 10)), atol=1e-6)
    tall = out(ResizeImagesByShorterEdge, images=torch.rand(2, 30, 7, 3), shorter_edge=3)
    assert tall.shape == (2, int(30 * (3 / 7)), 3, 3)  # a batch: each frame resized


def test_resize_by_longer_edge():
    image = torch.rand(1, 20, 30, 3)  # w 30 > h 20: w → 15, h → int(20 * 15 / 30) = 10
    result = out(ResizeImagesByLongerEdge, images=image, longer_edge=15)
    assert result.shape == (1, 10, 15, 3)
    np.testing.assert_allclose(result[0].numpy(), pil_lanczos(image, (15, 10)), atol=1e-6)
    # a thin image keeps a pixel (ComfyUI's int() would give 0 and fail in PIL)
    assert out(ResizeImagesByLongerEdge, images=torch.rand(1, 1, 1000, 3),
               longer_edge=100).shape == (1, 1, 100, 3)


def test_resize_past_the_pixel_limit_is_refused():
    with pytest.raises(ValueError, match="lower shorter_edge"):
        out(ResizeImagesByShorterEdge, images=torch.rand(1, 1, 64, 3), shorter_edge=8192)


def test_center_crop_by_hand():
    image = torch.arange(5 * 7 * 3, dtype=torch.float32).reshape(1, 5, 7, 3)
    # left = (7 - 3) // 2 = 2, top = (5 - 2) // 2 = 1
    assert torch.equal(out(CenterCropImages, images=image, width=3, height=2),
                       image[:, 1:3, 2:5])
    # wider than the image: the full width, nothing padded
    assert torch.equal(out(CenterCropImages, images=image, width=10, height=1),
                       image[:, 2:3, 0:7])


@pytest.mark.parametrize("seed", [0, 7, 2**32 - 1, 2**64 - 1])
def test_random_crop_draws_as_comfyui(seed):
    image = torch.rand(2, 12, 20, 3)
    np.random.seed(seed % (2**32 - 1))  # ComfyUI's draws, written out
    left, top = np.random.randint(0, 20 - 5 + 1), np.random.randint(0, 12 - 4 + 1)
    result = out(RandomCropImages, images=image, width=5, height=4, seed=seed)
    assert torch.equal(result, image[:, top:top + 4, left:left + 5])
    assert torch.equal(result, out(RandomCropImages, images=image, width=5, height=4,
                                   seed=seed))


def test_random_crop_of_a_small_image_keeps_it():
    image = torch.rand(1, 3, 4, 3)
    assert torch.equal(out(RandomCropImages, images=image, width=8, height=8, seed=1), image)


def test_colour_nodes_by_hand():
    image = torch.tensor([0.1, 0.7, 0.75]).reshape(1, 1, 1, 3)
    assert torch.allclose(out(NormalizeImages, images=image, mean=0.5, std=0.25),
                          torch.tensor([-1.6, 0.8, 1.0]).reshape(1, 1, 1, 3))
    assert torch.allclose(out(AdjustBrightness, images=image, factor=1.5),
                          torch.tensor([0.15, 1.0, 1.0]).reshape(1, 1, 1, 3))
    assert torch.allclose(out(AdjustContrast, images=image, factor=2.0),
                          torch.tensor([0.0, 0.9, 1.0]).reshape(1, 1, 1, 3))


def test_per_image_nodes_refuse_what_is_not_an_image():
    with pytest.raises(ValueError, match="IMAGE"):
        out(AdjustBrightness, images=torch.rand(4, 4, 3), factor=1.0)
    with pytest.raises(ValueError, match="empty"):
        out(CenterCropImages, images=torch.rand(1, 0, 4, 3), width=2, height=2)


# --- whole-list nodes ------------------------------------------------------------------------

def test_shuffle_follows_comfyuis_order():
    images = [solid((i / 10, 0, 0)) for i in range(6)]
    np.random.seed(123)
    order = np.random.permutation(6)
    result = out(ShuffleDataset, images=images, seed=[123])
    assert [round(float(r[0, 0, 0, 0]) * 10) for r in result] == order.tolist()
    # a batch in the list is split into single images first
    batch = torch.cat([solid((0.5, 0, 0)), solid((0.25, 0, 0))])
    assert [tuple(r.shape) for r in out(ShuffleDataset, images=[batch], seed=[0])] == [
        (1, 3, 4, 3)] * 2


def test_shuffle_pairs_keeps_captions_with_their_images():
    images = [solid((i / 10, 0, 0)) for i in range(5)]
    texts = [f"t{i}" for i in range(5)]
    shuffled, captions = call(ShuffleImageTextDataset, images=images, texts=texts, seed=[9])
    assert [f"t{round(float(r[0, 0, 0, 0]) * 10)}" for r in shuffled] == captions
    assert sorted(captions) == texts and captions != texts
    with pytest.raises(ValueError, match="5 images but 4 texts"):
        call(ShuffleImageTextDataset, images=images, texts=texts[:4], seed=[9])


def halves(left: bool) -> torch.Tensor:
    image = torch.zeros(1, 16, 16, 3)
    if left:
        image[:, :, :8] = 1.0
    else:
        image[:, :8, :] = 1.0
    return image


def test_deduplication_by_average_hash():
    a, b = halves(True), halves(False)
    near = (a * 0.98 + 0.01).clamp(0, 1)  # the same picture, slightly darker
    result = out(ImageDeduplication, images=[a, b, near, a.clone()],
                 similarity_threshold=[0.95])
    assert len(result) == 2 and torch.equal(result[0], a) and torch.equal(result[1], b)
    # similarity of a and b: their hashes agree on half the bits (left half vs top half)
    assert len(out(ImageDeduplication, images=[a, b], similarity_threshold=[0.5])) == 1
    assert len(out(ImageDeduplication, images=[a, b], similarity_threshold=[0.51])) == 2
    assert out(ImageDeduplication, images=[], similarity_threshold=[0.9]) == []


def test_grid_layout_by_hand():
    colours = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
    images = [solid(c, (40, 20)) for c in colours]
    grid = out(ImageGrid, images=images, columns=[2], cell_width=[32], cell_height=[32],
               padding=[2])
    assert grid.shape == (1, 66, 66, 3)  # 2 * 32 + 2 each way
    assert grid[0, 0, 0].tolist() == [1, 0, 0] and grid[0, 31, 31].tolist() == [1, 0, 0]
    assert grid[0, 0, 34].tolist() == [0, 1, 0] and grid[0, 34, 0].tolist() == [0, 0, 1]
    assert grid[0, 0, 32:34].abs().sum() == 0  # padding
    assert grid[0, 34:, 34:].abs().sum() == 0  # the empty fourth cell
    with pytest.raises(ValueError, match="at least one image"):
        out(ImageGrid, images=[], columns=[2], cell_width=[32], cell_height=[32], padding=[2])


def test_grid_past_the_pixel_limit_is_refused(monkeypatch):
    monkeypatch.setattr(dataset_images, "MAX_ITEM_PIXELS", 1000)
    with pytest.raises(ValueError, match="fewer images, more columns or smaller cells"):
        out(ImageGrid, images=[solid((1, 1, 1))], columns=[1], cell_width=[32],
            cell_height=[32], padding=[0])


def test_list_nodes_check_linked_widgets():
    with pytest.raises(ValueError, match="columns"):
        out(ImageGrid, images=[solid((1, 1, 1))], columns=[0], cell_width=[32],
            cell_height=[32], padding=[0])
    with pytest.raises(ValueError, match="seed"):
        out(ShuffleDataset, images=[solid((1, 1, 1))], seed=[-1])


def test_merge_image_lists_splits_batches():
    batch = torch.rand(3, 2, 2, 3)
    result = out(MergeImageLists, images=[batch, solid((0, 0, 0), (2, 2))])
    assert [tuple(r.shape) for r in result] == [(1, 2, 2, 3)] * 4
    assert torch.equal(torch.cat(result[:3]), batch)


def test_list_limit(monkeypatch):
    monkeypatch.setattr(dataset_images, "MAX_LIST_ITEMS", 3)
    with pytest.raises(ValueError, match="more than 3 images"):
        out(MergeImageLists, images=[torch.rand(4, 2, 2, 3)])


# --- text ------------------------------------------------------------------------------------

def test_text_nodes_by_hand():
    assert out(TextToLowercase, texts="A Cat") == "a cat"
    assert out(TextToUppercase, texts="A Cat") == "A CAT"
    assert out(TruncateText, texts="abcdef", max_length=4) == "abcd"
    assert out(AddTextPrefix, texts="cat", prefix="sks, ") == "sks, cat"
    assert out(AddTextSuffix, texts="cat", suffix=", 4k") == "cat, 4k"
    assert out(ReplaceText, texts="a cat, a hat", find="a ", replace="the ") == \
        "the cat, the hat"
    assert out(ReplaceText, texts="ab", find="", replace="-") == "-a-b-"
    assert out(StripWhitespace, texts=" \t cat \n") == "cat"
    assert out(MergeTextLists, texts=["a", "b"]) == ["a", "b"]


def test_text_results_are_bounded(monkeypatch):
    from nodes import dataset_text

    monkeypatch.setattr(dataset_text, "MAX_STRING_CHARS", 10)
    with pytest.raises(ValueError, match="11 characters"):
        out(AddTextSuffix, texts="hello", suffix=" world")
    with pytest.raises(ValueError, match="13 characters"):
        out(ReplaceText, texts="abcdef", find="", replace="-")
