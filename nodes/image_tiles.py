"""Tiles: ComfyUI's Split Image into List of Tiles (``SplitImageToTileList``) and Merge
List of Tiles to Image (``ImageMergeTileList``).

Split cuts an image into overlapping tiles and sends them on as a list, so the nodes it
feeds run once per tile (e.g. an upscale or img2img pass that would not fit whole);
Merge takes the list back and blends the tiles into one image, each tile weighted by a
sine window (high in its middle, near 0 at its edges) where tiles overlap.

The grid is ComfyUI's: tiles start every ``tile - overlap`` pixels (at least a quarter
tile), and the last tile of a row or column is moved back to end at the image's edge
(so every tile is whole when the image is at least a tile wide and tall).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from engine import ExecutionContext, Input, Node, Output
from nodes.conditioning import MAX_RESOLUTION
from nodes.diffusion.handles import Tensor
from nodes.limits import FLOAT32, check_fits, check_image

if TYPE_CHECKING:
    import torch

MAX_TILES = 4096


def grid(width: int, height: int, tile_w: int, tile_h: int, overlap: int
         ) -> Iterator[tuple[int, int, int, int]]:
    """The tiles ``(x1, y1, x2, y2)`` of a ``width`` x ``height`` image, row by row."""
    # ComfyUI's strides, but never 0 (a tile under 2 px with any overlap would loop)
    stride_x = max(1, round(max(tile_w * 0.25, tile_w - overlap)))
    stride_y = max(1, round(max(tile_h * 0.25, tile_h - overlap)))
    y = 0
    while y < height:
        y2 = min(y + tile_h, height)
        y1 = max(0, y2 - tile_h)
        x = 0
        while x < width:
            x2 = min(x + tile_w, width)
            yield max(0, x2 - tile_w), y1, x2, y2
            if x2 >= width:
                break
            x += stride_x
        if y2 >= height:
            break
        y += stride_y


def tile_count(width: int, height: int, tile_w: int, tile_h: int, overlap: int) -> int:
    """How many tiles :func:`grid` makes, without making them."""
    def along(size: int, tile: int) -> int:
        stride = max(1, round(max(tile * 0.25, tile - overlap)))
        return 1 if size <= tile else -(-(size - tile) // stride) + 1

    return along(width, tile_w) * along(height, tile_h)


class SplitImageToTileList(Node):
    """Cut images into ``tile_width`` x ``tile_height`` tiles overlapping by ``overlap``
    pixels, as a list: the nodes after it run once per tile. Merge List of Tiles to
    Image, given the same overlap and the image's size, puts them back together. A
    batch stays a batch in every tile."""

    TYPE = "SplitImageToTileList"
    DISPLAY_NAME = "Split Image into List of Tiles"
    CATEGORY = "image/batch"
    OUTPUTS = (Output("IMAGE", is_list=True),)

    image: Tensor = Input(type="IMAGE")
    tile_width: int = Input(1024, min=64, max=MAX_RESOLUTION)
    tile_height: int = Input(1024, min=64, max=MAX_RESOLUTION)
    overlap: int = Input(128, min=0, max=4096)

    def execute(self, ctx: ExecutionContext) -> tuple[list[torch.Tensor]]:
        check_image(self.image, "image")
        height, width = (int(v) for v in self.image.shape[1:3])
        count = tile_count(width, height, self.tile_width, self.tile_height, self.overlap)
        if count > MAX_TILES:
            raise ValueError(f"{width}x{height} px in {self.tile_width}x{self.tile_height} "
                             f"tiles overlapping by {self.overlap} would make {count} tiles, "
                             f"more than {MAX_TILES}: use larger tiles or less overlap")
        # Views of the image, as ComfyUI's (no copy: they overlap).
        return ([self.image[:, y1:y2, x1:x2] for x1, y1, x2, y2 in
                 grid(width, height, self.tile_width, self.tile_height, self.overlap)],)


class ImageMergeTileList(Node):
    """Put tiles from Split Image into List of Tiles back into one ``final_width`` x
    ``final_height`` image: give the original size and the same overlap. Tiles are
    placed by their order on the split's grid (computed from the first tile's size);
    where they overlap they are blended, each weighted by a sine window, so seams fade.
    Tiles beyond the grid are ignored; parts no tile covers stay black."""

    TYPE = "ImageMergeTileList"
    DISPLAY_NAME = "Merge List of Tiles to Image"
    CATEGORY = "image/batch"
    INPUT_IS_LIST = True
    OUTPUTS = (Output("IMAGE"),)

    image_list: Tensor = Input(type="IMAGE")
    final_width: int = Input(1024, min=64, max=32768)
    final_height: int = Input(1024, min=64, max=32768)
    overlap: int = Input(128, min=0, max=4096)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        import math

        import torch

        tiles: list[Any] = list(self.image_list)
        width = _first_int(self.final_width, "final_width", 64, 32768)
        height = _first_int(self.final_height, "final_height", 64, 32768)
        overlap = _first_int(self.overlap, "overlap", 0, 4096)
        if not tiles:
            raise ValueError("image_list is empty: link the tiles of Split Image into "
                             "List of Tiles")
        first = tiles[0]
        check_image(first, "first tile")
        batch, tile_h, tile_w, channels = (int(v) for v in first.shape)
        check_fits((channels + 1) * batch * width * height * FLOAT32, first.device,
                   f"a {width}x{height} px image of {batch}", "lower final_width/height")
        canvas = first.new_zeros((batch, height, width, channels))
        weights = first.new_zeros((batch, height, width, 1))
        if overlap > 0:
            wy = torch.sin(math.pi * torch.linspace(0, 1, tile_h, device=first.device,
                                                    dtype=first.dtype)).clamp(min=1e-5)
            wx = torch.sin(math.pi * torch.linspace(0, 1, tile_w, device=first.device,
                                                    dtype=first.dtype)).clamp(min=1e-5)
            window = (wy[:, None] * wx[None, :])[None, :, :, None]
        else:
            window = first.new_ones((1, tile_h, tile_w, 1))
        places = grid(width, height, tile_w, tile_h, overlap)
        for k, (tile, (x1, y1, x2, y2)) in enumerate(zip(tiles, places, strict=False)):
            check_image(tile, f"tile {k}")
            if tile.shape[0] != batch or tile.shape[-1] != channels:
                raise ValueError(f"tile {k} is {tuple(tile.shape)} but the first tile "
                                 f"{tuple(first.shape)}: every tile needs the same batch "
                                 "and channels")
            h, w = min(y2 - y1, int(tile.shape[1])), min(x2 - x1, int(tile.shape[2]))
            weight = window[:, :h, :w]
            canvas[:, y1:y1 + h, x1:x1 + w] += tile[:, :h, :w].to(canvas) * weight
            weights[:, y1:y1 + h, x1:x1 + w] += weight
        weights[weights == 0] = 1.0
        return (canvas / weights,)


def _first_int(value: Any, name: str, low: int, high: int) -> int:
    """An INPUT_IS_LIST node's number: the first of its list, as ComfyUI takes it (a
    linked one is not checked by the engine: it is here)."""
    value = value[0] if isinstance(value, list) and value else value
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got "
                         f"{str(value)[:40]}")
    return value


NODE_CLASSES = (SplitImageToTileList, ImageMergeTileList)
