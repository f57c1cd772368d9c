"""Load Image Batch: many images (a folder under input/ and/or a list of names) as one
IMAGE batch, with a caption per image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, Output
from engine.paths import PathError
from nodes.image import (
    IMAGE_SUFFIXES,
    file_sha256,
    pil_to_image,
    resolve_image,
    split_annotated,
    unreadable_image,
)
from nodes.image_decode import rgba8

if TYPE_CHECKING:
    import torch
    from PIL import Image

MAX_IMAGES = 256
# The batch is float32 RGB + mask: 16 bytes a pixel, so 2**25 pixels is 512 MiB
# (e.g. 128 images of 512x512, or 32 of 1024x1024).
MAX_TOTAL_PIXELS = 2**25
SIZE_MODES = ("resize", "center_crop", "refuse")


class BatchInputError(ValueError):
    """A bad ``folder`` or ``images`` entry; ``input_name`` says which."""

    def __init__(self, input_name: str, message: str):
        super().__init__(message)
        self.input_name = input_name


@dataclass(frozen=True)
class BatchEntry:
    """One image of the batch: what the user wrote, and the confined file it names."""

    label: str
    path: Path
    root: Path


def image_lines(text: str) -> list[str]:
    """The non-empty lines of the ``images`` widget, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def collect_entries(env: Environment, folder: str, images: str) -> list[BatchEntry]:
    """The images a node names: the folder's (sorted by name), then each line's.

    Raises :class:`BatchInputError` with a message naming the bad entry (escapes out of
    the folders included)."""
    entries: list[BatchEntry] = []
    folder = folder.strip()
    folder = folder.rstrip("/") or folder  # "sub/" is "sub"; "/" stays absolute
    if folder:
        try:
            directory = env.resolve("input", folder)
        except PathError as exc:
            raise BatchInputError("folder", f"folder {folder!r}: {exc}") from None
        if not directory.is_dir():
            raise BatchInputError("folder", f"folder {folder!r} is not a subfolder of the "
                                  "input folder")
        root = env.folder("input").resolve()
        for item in sorted(directory.iterdir(), key=lambda p: p.name):
            if item.name.startswith(".") or not item.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            try:  # a symlink in the folder that points outside it is refused, not followed
                path = env.resolve("input", folder, item.name)
            except PathError as exc:
                raise BatchInputError("folder", f"folder {folder!r}: {item.name!r}: {exc}"
                                      ) from None
            if path.is_file():
                entries.append(BatchEntry(f"{folder}/{item.name}", path, root))
    for number, line in enumerate(image_lines(images), 1):
        role, rel = split_annotated(line)
        try:
            path = resolve_image(env, line)
        except PathError as exc:
            raise BatchInputError("images", f"images line {number} ({line!r}): {exc}") from None
        if not path.is_file():
            raise BatchInputError("images", f"images line {number}: {rel!r} is not a file in "
                                  f"the {role} folder")
        entries.append(BatchEntry(line, path, env.folder(role).resolve()))
    return entries


def caption_file(entry: BatchEntry) -> Path | None:
    """``<stem>.txt`` beside the image, if it exists inside the image's folder."""
    candidate = entry.path.with_suffix(".txt")
    try:
        resolved = candidate.resolve()
    except OSError:
        return None
    if entry.root not in resolved.parents or not resolved.is_file():
        return None
    return resolved


def caption_for(entry: BatchEntry, template: str) -> str:
    """``template`` with ``{caption}`` (the .txt beside the image, or "") and ``{name}``
    (the file stem) filled in, on one line."""
    path = caption_file(entry)
    caption = path.read_text(encoding="utf-8", errors="replace").strip() if path else ""
    text = template.replace("{caption}", caption).replace("{name}", entry.path.stem)
    return " ".join(text.split())


class LoadImageBatch(Node):
    """Load many images as one IMAGE batch: every image of a subfolder of input/
    (sorted by name) and/or a list of names, one per line; with a caption per image.

    Lines take the names Load Image takes, annotated ones included, so images made by
    earlier runs work directly: ``x.png`` (input/), ``sub/x.png [output]``,
    ``x.png [temp]``. The canvas's gallery fills the list: with a FABRIC Feedback node in
    the graph, Like / Dislike on an image adds it to the Load Image Batch linked into
    that node's ``liked`` / ``disliked`` input.

    Sizes: ``resize`` scales every image to the first one's size (Lanczos, aspect not
    kept), ``center_crop`` scales each to cover that size (Lanczos) and crops the middle,
    ``refuse`` stops with an error naming the two sizes. Masks come from alpha (1 where
    transparent, as Load Image) and follow the same resizing. ``captions`` has one line
    per image: ``caption_template`` with ``{caption}`` = the text of the ``.txt`` file
    beside the image (empty when there is none) and ``{name}`` = the file's stem.

    At most 256 images and 2**25 pixels in all (the batch is held in memory as float32).
    Edited files re-run the node: it is cached on their content.
    """

    TYPE = "LoadImageBatch"
    DISPLAY_NAME = "Load Image Batch"
    CATEGORY = "image"
    OUTPUTS = (Output("IMAGE"), Output("MASK"), Output("STRING", "captions"))

    folder: str = Input("", description="A subfolder of input/ whose images all load "
                        "(sorted by name); empty for none")
    images: str = Input("", multiline=True, description="One image per line: a name in "
                        "input/, or annotated: 'x.png [output]', 'sub/x.png [temp]'")
    size: str = Input("resize", choices=SIZE_MODES, description="Images of another size "
                      "than the first: resize (Lanczos), center_crop, or refuse")
    caption_template: str = Input("{caption}", description="Caption per image: {caption} "
                                  "= the .txt beside it, {name} = its file stem")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        folder, images = inputs.get("folder"), inputs.get("images")
        if not isinstance(folder, str) or not isinstance(images, str):
            return []  # linked from another node: checked when it runs
        try:
            entries = collect_entries(env, folder, images)
        except BatchInputError as exc:
            return [(exc.input_name, str(exc))]
        except OSError as exc:  # e.g. an unreadable folder
            return [("folder", f"cannot list folder {folder!r}: {exc}")]
        problem = count_problem(len(entries), folder)
        return [("images", problem)] if problem else []

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        folder, images = inputs.get("folder"), inputs.get("images")
        if not isinstance(folder, str) or not isinstance(images, str):
            return None
        try:
            entries = collect_entries(env, folder, images)
        except (ValueError, OSError):
            return None
        digests = []
        for entry in entries:
            caption = caption_file(entry)
            digests.append((entry.label, file_sha256(entry.path),
                            file_sha256(caption) if caption else None))
        return digests

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor, torch.Tensor, str]:
        import torch

        entries = collect_entries(ctx.env, self.folder, self.images)
        problem = count_problem(len(entries), self.folder)
        if problem:
            raise ValueError(problem)
        sizes = [read_size(e) for e in entries]
        width, height = sizes[0]
        if len(entries) * width * height > MAX_TOTAL_PIXELS:
            raise ValueError(f"{len(entries)} images of {width}x{height} are "
                             f"{len(entries) * width * height} pixels, over the "
                             f"{MAX_TOTAL_PIXELS} a batch may hold: load fewer or smaller "
                             "images")
        if self.size == "refuse":
            for entry, other in zip(entries[1:], sizes[1:], strict=True):
                if other != (width, height):
                    raise ValueError(
                        f"{entry.label!r} is {other[0]}x{other[1]} but {entries[0].label!r} "
                        f"is {width}x{height}: size is 'refuse'; use resize or center_crop, "
                        "or images of one size")
        images, masks = [], []
        for entry in entries:
            image, mask = load_fitted(entry, (width, height), self.size)
            images.append(image)
            masks.append(mask)
            ctx.check_interrupt()
        captions = "\n".join(caption_for(e, self.caption_template) for e in entries)
        return (torch.cat(images).to(ctx.device), torch.cat(masks).to(ctx.device), captions)


def count_problem(count: int, folder: str) -> str | None:
    if count == 0:
        where = f"folder {folder.strip()!r} has no images and " if folder.strip() else ""
        return (f"no images: {where}the images list is empty; list one image per line "
                "(e.g. 'x.png' in input/, 'x.png [output]') or name a subfolder of input/")
    if count > MAX_IMAGES:
        return f"{count} images: a batch holds at most {MAX_IMAGES}"
    return None


def _open(entry: BatchEntry) -> Image.Image:
    from PIL import Image

    try:
        return Image.open(entry.path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{entry.label!r} no longer exists") from None
    except (OSError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError: OSError
        raise unreadable_image(entry.label, exc) from None


def read_size(entry: BatchEntry) -> tuple[int, int]:
    """The image's (width, height) after its EXIF orientation, from its header only."""
    with _open(entry) as img:
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def load_fitted(entry: BatchEntry, size: tuple[int, int], mode: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one image as (IMAGE [1,H,W,3], MASK [1,H,W]) at ``size`` (width, height)."""
    from PIL import Image, ImageOps

    with _open(entry) as img:
        try:
            rgba = rgba8(ImageOps.exif_transpose(img))
        except OSError as exc:  # truncated or corrupt data shows only when decoding
            raise unreadable_image(entry.label, exc) from None
    if rgba.size != size:
        if mode == "center_crop":
            scale = max(size[0] / rgba.width, size[1] / rgba.height)
            cover = (max(size[0], round(rgba.width * scale)),
                     max(size[1], round(rgba.height * scale)))
            rgba = rgba.resize(cover, Image.LANCZOS)
            left, top = (cover[0] - size[0]) // 2, (cover[1] - size[1]) // 2
            rgba = rgba.crop((left, top, left + size[0], top + size[1]))
        else:
            rgba = rgba.resize(size, Image.LANCZOS)
    return pil_to_image(rgba)


NODE_CLASSES = (LoadImageBatch,)
