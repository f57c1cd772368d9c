"""ComfyUI's image-list nodes (``comfy_extras/nodes_dataset.py``): resize, crop, colour and
list operations over a list of images, under ComfyUI's ids, inputs and defaults.

An image list (ComfyUI's ``is_output_list``) is a list of IMAGE tensors ``[1, H, W, C]``
that may differ in size; a node downstream of one runs once per image (see
:mod:`engine.lists`). The per-image nodes here are plain nodes, so they work on a single
image or batch too (a batch is processed frame by frame, as ComfyUI does); the list
nodes (Shuffle, Deduplicate, Grid, Merge) take the whole list (``INPUT_IS_LIST``) and
split batches in it into single images first, as ComfyUI does.

Limits: a list holds at most :data:`MAX_LIST_ITEMS` images and an image made here at
most :data:`MAX_ITEM_PIXELS` pixels (per batch); a larger result is refused with an
error naming the input to change. Torch-free at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import ExecutionContext, Input, Node, Output
from engine.validation import check_constant
from nodes.diffusion.handles import Tensor
from nodes.image_batch import MAX_TOTAL_PIXELS
from nodes.limits import check_image

if TYPE_CHECKING:
    import torch

MAX_LIST_ITEMS = 4096
"""The most images a list node takes (after splitting batches), or a loader gives."""
MAX_ITEM_PIXELS = MAX_TOTAL_PIXELS
"""The most pixels (frames x height x width) one image or batch made here may have."""
SEED_MAX = 2**64 - 1
SEED_MODULUS = 2**32 - 1  # ComfyUI seeds numpy's legacy generator with seed % (2**32 - 1)
CATEGORY_TRANSFORM = "image/transform"
CATEGORY_BATCH = "image/batch"


# --- shared helpers --------------------------------------------------------------------------

def list_widget(cls: type[Node], name: str, values: Any) -> Any:
    """The value of widget ``name`` of an ``INPUT_IS_LIST`` node (its first element, as
    ComfyUI takes it), checked as the engine checks a constant: such a node gets linked
    widget values unchecked."""
    if isinstance(values, list):
        if not values:
            raise ValueError(f"input '{name}' got an empty list; it needs one value")
        values = values[0]
    value, issue = check_constant(cls.INPUT_SPECS[name], values, None)
    if issue is not None:
        raise ValueError(issue.message)
    return value


def image_items(images: Any, what: str = "images") -> list[torch.Tensor]:
    """A list of IMAGE batches (or one batch) as a flat list of single images
    ``[1, H, W, C]`` (ComfyUI's ``_ensure_image_list``); at most :data:`MAX_LIST_ITEMS`."""
    batches = images if isinstance(images, list) else [images]
    items: list[torch.Tensor] = []
    for n, batch in enumerate(batches):
        check_image(batch, f"{what}[{n}]" if len(batches) > 1 else what)
        items.extend(batch[i:i + 1] for i in range(batch.shape[0]))
        if len(items) > MAX_LIST_ITEMS:
            raise ValueError(f"{what}: more than {MAX_LIST_ITEMS} images in the list; the "
                             f"most a list node takes is {MAX_LIST_ITEMS}")
    return items


def check_pixels(frames: int, width: int, height: int, fix: str) -> None:
    """Refuse an image (batch) of ``frames`` x ``width`` x ``height`` over the limit."""
    if frames * width * height > MAX_ITEM_PIXELS:
        raise ValueError(f"the result would be {frames} x {width}x{height} = "
                         f"{frames * width * height} pixels, over the {MAX_ITEM_PIXELS} an "
                         f"image made here may have: {fix}")


def lanczos_resize(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """IMAGE ``[B, H, W, C]`` resized with PIL's Lanczos on the 8-bit image (as ComfyUI)."""
    from nodes.diffusion.resize import lanczos

    return lanczos(image.movedim(-1, 1), width, height).movedim(1, -1)


def numpy_rng(seed: int) -> Any:
    """numpy's legacy generator as ComfyUI seeds it (``np.random.seed(seed % (2**32 - 1))``),
    so crops and shuffles come out as ComfyUI's for the same seed."""
    import numpy as np

    return np.random.RandomState(int(seed) % SEED_MODULUS)


def _tick(ctx: ExecutionContext | None) -> None:
    if ctx is not None:
        ctx.check_interrupt()


# --- per-image nodes -------------------------------------------------------------------------

class ImageNode(Node):
    """Base of the per-image nodes (not a node): ``images`` is one IMAGE (a list runs
    the node once per image)."""

    OUTPUTS = (Output("IMAGE", "images", tooltip="Processed images"),)

    images: Tensor = Input(type="IMAGE", description="Image to process.")

    def checked(self) -> torch.Tensor:
        check_image(self.images, "images")
        return self.images


class ResizeImagesByShorterEdge(ImageNode):
    """Resize each image so its shorter edge is ``shorter_edge`` pixels, keeping the
    aspect ratio (the other edge is rounded down; Lanczos on the 8-bit image, as
    ComfyUI). ComfyUI marks it deprecated in favour of Resize Image/Mask."""

    TYPE = "ResizeImagesByShorterEdge"
    DISPLAY_NAME = "Resize Images by Shorter Edge (DEPRECATED)"
    CATEGORY = CATEGORY_TRANSFORM
    DEPRECATED = True

    shorter_edge: int = Input(512, min=1, max=8192,
                              description="Target dimension for the shorter edge.")

    def execute(self, ctx: ExecutionContext | None) -> tuple[torch.Tensor]:
        return (resize_edge(self.checked(), self.shorter_edge, shorter=True),)


class ResizeImagesByLongerEdge(ImageNode):
    """Resize each image so its longer edge is ``longer_edge`` pixels, keeping the aspect
    ratio (the other edge is rounded down, at least 1; Lanczos on the 8-bit image, as
    ComfyUI). ComfyUI marks it deprecated in favour of Resize Image/Mask."""

    TYPE = "ResizeImagesByLongerEdge"
    DISPLAY_NAME = "Resize Images by Longer Edge (DEPRECATED)"
    CATEGORY = CATEGORY_TRANSFORM
    DEPRECATED = True

    longer_edge: int = Input(1024, min=1, max=8192,
                             description="Target dimension for the longer edge.")

    def execute(self, ctx: ExecutionContext | None) -> tuple[torch.Tensor]:
        return (resize_edge(self.checked(), self.longer_edge, shorter=False),)


def resize_edge(image: torch.Tensor, edge: int, *, shorter: bool) -> torch.Tensor:
    """``image`` resized so its shorter (or longer) edge is ``edge`` pixels, the aspect kept
    (the other edge rounded down, at least 1; Lanczos on the 8-bit image, as ComfyUI)."""
    frames, h, w = image.shape[:3]
    if (w < h) if shorter else (w > h):  # the width is the edge asked for
        new_w, new_h = edge, max(1, int(h * (edge / w)))
    else:
        new_w, new_h = max(1, int(w * (edge / h))), edge
    check_pixels(frames, new_w, new_h, f"lower {'shorter' if shorter else 'longer'}_edge")
    return lanczos_resize(image, new_w, new_h)


def crop_box(width: int, height: int, left: int, top: int, crop_w: int, crop_h: int
             ) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of a ``crop_w`` x ``crop_h`` crop at ``left, top``,
    cut to the image (an image smaller than the crop keeps its size on that side)."""
    return left, top, min(width, left + crop_w), min(height, top + crop_h)


class CenterCropImages(ImageNode):
    """Crop the middle ``width`` x ``height`` of each image (an image smaller than that on
    a side keeps its size on that side: nothing is padded). Pixel values are kept
    exactly."""

    TYPE = "CenterCropImages"
    DISPLAY_NAME = "Crop Image (Center)"
    CATEGORY = CATEGORY_TRANSFORM

    width: int = Input(512, min=1, max=8192, description="Crop width.")
    height: int = Input(512, min=1, max=8192, description="Crop height.")

    def execute(self, ctx: ExecutionContext | None) -> tuple[torch.Tensor]:
        image = self.checked()
        h, w = image.shape[1:3]
        left, top, right, bottom = crop_box(w, h, max(0, (w - self.width) // 2),
                                            max(0, (h - self.height) // 2),
                                            self.width, self.height)
        return (image[:, top:bottom, left:right, :],)


class RandomCropImages(ImageNode):
    """Crop a ``width`` x ``height`` window at a random place of each image, for data
    augmentation; the place follows ``seed`` (ComfyUI's draws: numpy seeded with
    ``seed % (2**32 - 1)``, so the same seed crops where ComfyUI does). Every frame of a
    batch is cropped at the same place; an image smaller than the window keeps its size
    on that side."""

    TYPE = "RandomCropImages"
    DISPLAY_NAME = "Crop Image (Random)"
    CATEGORY = CATEGORY_TRANSFORM

    width: int = Input(512, min=1, max=8192, description="Crop width.")
    height: int = Input(512, min=1, max=8192, description="Crop height.")
    seed: int = Input(0, min=0, max=SEED_MAX, description="Random seed.")

    def execute(self, ctx: ExecutionContext | None) -> tuple[torch.Tensor]:
        image = self.checked()
        h, w = image.shape[1:3]
        rng = numpy_rng(self.seed)
        max_left, max_top = max(0, w - self.width), max(0, h - self.height)
        left = int(rng.randint(0, max_left + 1)) if max_left > 0 else 0
        top = int(rng.randint(0, max_top + 1)) if max_top > 0 else 0
        left, top, right, bottom = crop_box(w, h, left, top, self.width, self.height)
        return (image[:, top:bottom, left:right, :],)


class NormalizeImages(ImageNode):
    """``(image - mean) / std`` on every channel: values leave 0..1 (e.g. -1..1 with the
    defaults), for nodes that expect normalized input; not for viewing or saving."""

    TYPE = "NormalizeImages"
    DISPLAY_NAME = "Normalize Image Colors"
    CATEGORY = "image/color"

    mean: float = Input(0.5, min=0.0, max=1.0, description="Mean value for normalization.")
    std: float = Input(0.5, min=0.001, max=1.0,
                       description="Standard deviation for normalization.")

    def execute(self, ctx: ExecutionContext | None) -> tuple[torch.Tensor]:
        return ((self.checked() - self.mean) / self.std,)


class AdjustBrightness(ImageNode):
    """Multiply every value by ``factor`` (1 = unchanged, < 1 darker, > 1 brighter),
    clamped to 0..1."""

    TYPE = "AdjustBrightness"
    DISPLAY_NAME = "Adjust Brightness"
    CATEGORY = "image/adjustments"

    factor: float = Input(1.0, min=0.0, max=2.0, description="Brightness factor. 1.0 = no "
                          "change, <1.0 = darker, >1.0 = brighter.")

    def execute(self, ctx: ExecutionContext | None) -> tuple[torch.Tensor]:
        return ((self.checked() * self.factor).clamp(0.0, 1.0),)


class AdjustContrast(ImageNode):
    """Scale every value's distance from mid-grey 0.5 by ``factor`` (1 = unchanged,
    0 = flat grey, 2 = double), clamped to 0..1."""

    TYPE = "AdjustContrast"
    DISPLAY_NAME = "Adjust Contrast"
    CATEGORY = "image/adjustments"

    factor: float = Input(1.0, min=0.0, max=2.0, description="Contrast factor. 1.0 = no "
                          "change, <1.0 = less contrast, >1.0 = more contrast.")

    def execute(self, ctx: ExecutionContext | None) -> tuple[torch.Tensor]:
        return (((self.checked() - 0.5) * self.factor + 0.5).clamp(0.0, 1.0),)


# --- whole-list nodes ------------------------------------------------------------------------

class ImageListNode(Node):
    """Base of the nodes that take the whole image list (not a node)."""

    INPUT_IS_LIST = True
    OUTPUTS = (Output("IMAGE", "images", is_list=True, tooltip="Processed images"),)

    images: Any = Input(type="IMAGE", description="List of images to process.")


class ShuffleDataset(ImageListNode):
    """Put the images of a list in a random order that follows ``seed`` (the order
    ComfyUI gives for the same seed). Batches in the list are split into single images
    first."""

    TYPE = "ShuffleDataset"
    DISPLAY_NAME = "Shuffle Images List"
    CATEGORY = CATEGORY_BATCH

    seed: int = Input(0, min=0, max=SEED_MAX, description="Random seed.")

    def execute(self, ctx: ExecutionContext | None) -> tuple[list[torch.Tensor]]:
        items = image_items(self.images)
        order = numpy_rng(list_widget(type(self), "seed", self.seed)).permutation(len(items))
        return ([items[int(i)] for i in order],)


class ShuffleImageTextDataset(Node):
    """Shuffle image-caption pairs: images and texts (two lists of the same length, e.g.
    from Load Image-Text (from Folder)) in one random order that follows ``seed``, so
    each caption stays with its image."""

    TYPE = "ShuffleImageTextDataset"
    DISPLAY_NAME = "Shuffle Pairs of Image-Text"
    CATEGORY = CATEGORY_BATCH
    INPUT_IS_LIST = True
    OUTPUTS = (Output("IMAGE", "images", is_list=True, tooltip="Shuffled images"),
               Output("STRING", "texts", is_list=True, tooltip="Shuffled texts"))

    images: Any = Input(type="IMAGE", description="List of images to shuffle.")
    texts: Any = Input(type="STRING", force_input=True, description="List of texts to "
                       "shuffle.")
    seed: int = Input(0, min=0, max=SEED_MAX, description="Random seed.")

    def execute(self, ctx: ExecutionContext | None
                ) -> tuple[list[torch.Tensor], list[str]]:
        images = self.images if isinstance(self.images, list) else [self.images]
        texts = self.texts if isinstance(self.texts, list) else [self.texts]
        for n, image in enumerate(images):
            check_image(image, f"images[{n}]")
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts: the two lists "
                             "must pair up one to one (link the images and texts outputs "
                             "of one loader)")
        if len(images) > MAX_LIST_ITEMS:
            raise ValueError(f"{len(images)} pairs; the most is {MAX_LIST_ITEMS}")
        order = numpy_rng(list_widget(type(self), "seed", self.seed)).permutation(len(images))
        return [images[int(i)] for i in order], [texts[int(i)] for i in order]


def average_hash(image: torch.Tensor) -> list[bool]:
    """ComfyUI's perceptual hash of an image ``[1, H, W, C]``: 8x8 Lanczos on the 8-bit
    image, to grey (PIL's ``L``), each pixel above the mean → True."""
    import numpy as np
    from PIL import Image

    small = lanczos_resize(image, 8, 8)[0]
    arr = (small.float().cpu().numpy() * 255.0).round().astype(np.uint8)
    grey = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3]).convert("L")
    pixels = np.asarray(grey, dtype=np.float64).reshape(-1)
    return [bool(p > pixels.mean()) for p in pixels]


class ImageDeduplication(ImageListNode):
    """Drop images that look like an earlier one: each image's 8x8 average hash is
    compared with the kept images' (similarity = share of the 64 bits that agree); one at
    or above ``similarity_threshold`` is dropped. 1.0 drops only images with identical
    hashes (exact and near-exact copies, e.g. resized or recompressed), lower values
    also drop similar pictures; the first of each group is kept, in list order."""

    TYPE = "ImageDeduplication"
    DISPLAY_NAME = "Deduplicate Images"
    CATEGORY = CATEGORY_BATCH

    similarity_threshold: float = Input(
        0.95, min=0.0, max=1.0, description="Similarity threshold (0-1). Higher means more "
        "similar. Images above this threshold are considered duplicates.")

    def execute(self, ctx: ExecutionContext | None) -> tuple[list[torch.Tensor]]:
        threshold = list_widget(type(self), "similarity_threshold", self.similarity_threshold)
        kept: list[tuple[torch.Tensor, list[bool]]] = []
        for image in image_items(self.images):
            _tick(ctx)
            bits = average_hash(image)
            if not any(1.0 - sum(a != b for a, b in zip(bits, other, strict=True)) / 64.0
                       >= threshold for _, other in kept):
                kept.append((image, bits))
        return ([image for image, _ in kept],)


class ImageGrid(ImageListNode):
    """Lay a list of images out as one image: ``columns`` cells a row, each image resized
    to ``cell_width`` x ``cell_height`` (Lanczos, aspect not kept), ``padding`` black
    pixels between cells, rows as many as needed; empty cells stay black. A contact sheet
    of a dataset, for a look at it."""

    TYPE = "ImageGrid"
    DISPLAY_NAME = "Make Image Grid"
    CATEGORY = CATEGORY_BATCH
    OUTPUTS = (Output("IMAGE", "images", tooltip="Processed images"),)

    columns: int = Input(4, min=1, max=20, description="Number of columns in the grid.")
    cell_width: int = Input(256, min=32, max=2048, description="Width of each cell in the "
                            "grid.")
    cell_height: int = Input(256, min=32, max=2048, description="Height of each cell in "
                             "the grid.")
    padding: int = Input(4, min=0, max=50, description="Padding between images.")

    def execute(self, ctx: ExecutionContext | None) -> tuple[torch.Tensor]:
        import torch

        cls = type(self)
        columns, cell_w, cell_h, pad = (list_widget(cls, name, getattr(self, name)) for name
                                        in ("columns", "cell_width", "cell_height", "padding"))
        items = image_items(self.images)
        if not items:
            raise ValueError("images: the list is empty; a grid needs at least one image")
        rows = -(-len(items) // columns)
        width, height = columns * cell_w + (columns - 1) * pad, rows * cell_h + (rows - 1) * pad
        check_pixels(1, width, height, "use fewer images, more columns or smaller cells")
        grid = torch.zeros((1, height, width, 3), dtype=torch.float32, device=items[0].device)
        for n, image in enumerate(items):
            _tick(ctx)
            cell = lanczos_resize(image.float(), cell_w, cell_h)[0]
            cell = cell.expand(-1, -1, 3) if cell.shape[-1] == 1 else cell[..., :3]
            x, y = (n % columns) * (cell_w + pad), (n // columns) * (cell_h + pad)
            grid[0, y:y + cell_h, x:x + cell_w] = cell.to(grid.device)
        return (grid,)


class MergeImageLists(ImageListNode):
    """The images of a list, batches split into single images (ComfyUI marks it
    deprecated in favour of Create List)."""

    TYPE = "MergeImageLists"
    DISPLAY_NAME = "Merge Image Lists (DEPRECATED)"
    CATEGORY = CATEGORY_BATCH
    DEPRECATED = True

    def execute(self, ctx: ExecutionContext | None) -> tuple[list[torch.Tensor]]:
        return (image_items(self.images),)


NODE_CLASSES = (ResizeImagesByShorterEdge, ResizeImagesByLongerEdge, CenterCropImages,
                RandomCropImages, NormalizeImages, AdjustBrightness, AdjustContrast,
                ShuffleDataset, ShuffleImageTextDataset, ImageDeduplication, ImageGrid,
                MergeImageLists)
