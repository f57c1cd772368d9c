"""The dataset nodes with extreme but in-bounds inputs (1x1 images, the widest bounds,
grey and RGBA images, hostile list items): each gives a result or a clear ValueError,
never a raw torch or PIL error, and nothing huge is allocated before it is refused."""

from __future__ import annotations

import time

import pytest
import torch
from PIL import Image

from nodes.dataset_folders import save_pair
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
from nodes.dataset_text import ReplaceText, TruncateText
from nodes.primitives import MAX_STRING_CHARS

PER_IMAGE = [
    (ResizeImagesByShorterEdge, {"shorter_edge": 1}),
    (ResizeImagesByLongerEdge, {"longer_edge": 1}),
    (CenterCropImages, {"width": 8192, "height": 1}),
    (RandomCropImages, {"width": 1, "height": 8192, "seed": 2**64 - 1}),
    (NormalizeImages, {"mean": 1.0, "std": 0.001}),
    (AdjustBrightness, {"factor": 2.0}),
    (AdjustContrast, {"factor": 0.0}),
]


def run(cls, **inputs):
    node = cls.model_construct(**inputs) if cls.INPUT_IS_LIST else cls(**inputs)
    return node.execute(None)


@pytest.mark.parametrize(("cls", "inputs"), PER_IMAGE)
@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 1, 9, 1), (1, 7, 1, 4)])
def test_per_image_nodes_on_tiny_grey_and_rgba_images(cls, inputs, shape):
    image = torch.rand(shape)
    (result,) = run(cls, images=image, **inputs)
    assert result.dim() == 4 and result.shape[0] == shape[0] and result.shape[3] == shape[3]
    assert min(result.shape[1:3]) >= 1 and bool(result.isfinite().all())


@pytest.mark.parametrize(("cls", "inputs"), [
    (ResizeImagesByShorterEdge, {"shorter_edge": 8192}),  # 1x1 → 8192x8192
    (ResizeImagesByLongerEdge, {"longer_edge": 8192}),  # 1x1 → 8192x8192 too
])
def test_huge_resizes_are_refused_before_resizing(cls, inputs, monkeypatch):
    from nodes.diffusion import resize

    def no_resize(*args, **kwargs):
        raise AssertionError("resized before the size was checked")

    monkeypatch.setattr(resize, "lanczos", no_resize)
    with pytest.raises(ValueError, match=r"over the \d+ an image made here may have"):
        run(cls, images=torch.rand(1, 1, 1, 3), **inputs)


def test_widest_grid_is_refused_before_allocating():
    start = time.perf_counter()
    with pytest.raises(ValueError, match="fewer images, more columns or smaller cells"):
        run(ImageGrid, images=[torch.rand(1, 1, 1, 3)], columns=[20], cell_width=[2048],
            cell_height=[2048], padding=[50])
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_list_nodes_on_1x1_images(channels):
    images = [torch.rand(1, 1, 1, channels), torch.rand(3, 1, 1, channels)]
    assert len(run(ShuffleDataset, images=images, seed=[2**64 - 1])[0]) == 4
    assert len(run(MergeImageLists, images=images)[0]) == 4
    assert 1 <= len(run(ImageDeduplication, images=images, similarity_threshold=[0.0])[0]) <= 4
    (grid,) = run(ImageGrid, images=images, columns=[1], cell_width=[32], cell_height=[32],
                  padding=[50])
    assert grid.shape == (1, 4 * 32 + 3 * 50, 32, 3)


@pytest.mark.parametrize("item", ["not an image", None, torch.rand(4, 4, 3),
                                  torch.rand(1, 4, 4, 2), torch.rand(1, 0, 4, 3)])
def test_hostile_list_items_are_clear_errors(item):
    images = [torch.rand(1, 2, 2, 3), item]
    for cls, extra in ((ShuffleDataset, {"seed": [0]}), (MergeImageLists, {}),
                       (ImageDeduplication, {"similarity_threshold": [0.5]}),
                       (ImageGrid, {"columns": [2], "cell_width": [32], "cell_height": [32],
                                    "padding": [0]})):
        with pytest.raises(ValueError, match=r"images\[1\]"):
            run(cls, images=images, **extra)
    with pytest.raises(ValueError, match=r"images\[1\]"):
        run(ShuffleImageTextDataset, images=images, texts=["a", "b"], seed=[0])


def test_replace_that_would_explode_is_refused_before_building():
    start = time.perf_counter()
    with pytest.raises(ValueError, match="the most is"):
        run(ReplaceText, texts="a" * 100_000, find="", replace="x" * 10)
    assert time.perf_counter() - start < 1.0
    assert run(TruncateText, texts="", max_length=10000) == ("",)
    with pytest.raises(ValueError, match="characters long"):
        run(TruncateText, texts="a" * (MAX_STRING_CHARS + 1), max_length=1)


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (3, "RGB"), (4, "RGBA")])
def test_save_grey_and_rgba_images(tmp_path, channels, mode):
    image = torch.rand(1, 3, 5, channels)
    path, replaced = save_pair(tmp_path, "p", 7, image, "a caption", None)
    assert path.name == "p_00007.png" and replaced == 0
    with Image.open(path) as saved:
        assert saved.mode == mode and saved.size == (5, 3)
    assert path.with_suffix(".txt").read_text() == "a caption"
    assert save_pair(tmp_path, "p", 7, image, None, None)[1] == 1  # the png replaced
    path, _ = save_pair(tmp_path, "p", 7, image, "x", 3)
    assert path.name == "p_00003_00007.png"
