"""Pillow helpers: preview frames, /view re-encoding and upload checks.

Decoding an image in the server goes through :func:`run_decode`: headers first (the
pixel limit, decompression bombs as 413), then the decode itself off the event loop,
a big one on its own small pool so that previews never hold the threads uploads need.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, ImageFile

T = TypeVar("T")
#: an image to decode: its bytes, or the path of its file
ImageSource = bytes | str | Path

PREVIEW_MAX = 512
# Pillow format → (canonical suffix, Content-Type, accepted suffixes).
FORMATS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "PNG": (".png", "image/png", (".png",)),
    "JPEG": (".jpg", "image/jpeg", (".jpg", ".jpeg")),
    "WEBP": (".webp", "image/webp", (".webp",)),
    "GIF": (".gif", "image/gif", (".gif",)),
    "BMP": (".bmp", "image/bmp", (".bmp",)),
    "TIFF": (".tiff", "image/tiff", (".tif", ".tiff")),
}
CONTENT_TYPES = {suffix: ctype for _, ctype, suffixes in FORMATS.values() for suffix in suffixes}
# Leading bytes of each type we serve: a file named .png must also be one.
MAGIC: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/webp": (b"RIFF",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/bmp": (b"BM",),
    "image/tiff": (b"II*\x00", b"MM\x00*"),
}


#: the most pixels an image may have to be uploaded or re-encoded here: decoding one
#: takes memory in the server (a 0.5 MB PNG of 13000x13000 took 1.3 GB per /view preview)
MAX_IMAGE_PIXELS = 8192 * 8192
#: the longer side of a ``/view?preview=`` image: ComfyUI's front end asks for one as "a
#: lightweight image" for a node's widget (its Comfy.PreviewFormat setting), and an 8192²
#: WebP took a minute of CPU; ``channel`` alone (the mask editor) stays full size
PREVIEW_SIDE = 2048
#: decodes at once of images past LIGHT_PIXELS (each may hold a MAX_IMAGE_PIXELS image,
#: 1 GB with its copies): the one bound on /view re-encodes and /upload/mask alike
DECODE_SLOTS = 2
#: a job decoding at most this many pixels in all (a 1024² photo and its mask) runs at
#: once on the default executor: it never waits behind the big ones
LIGHT_PIXELS = 2048 * 1024
_DECODE_POOL = ThreadPoolExecutor(DECODE_SLOTS, thread_name_prefix="steerflow-decode")
# Pillow's LOAD_TRUNCATED_IMAGES is a module global: only one retry sets it at a time
_TRUNCATED = threading.Lock()


class NotAnImage(ValueError):
    """Uploaded bytes are not an image of an accepted format."""


class ImageTooLarge(NotAnImage):
    """An image with more than :data:`MAX_IMAGE_PIXELS` pixels."""


def check_pixels(img: Image.Image) -> None:
    """Raise :class:`ImageTooLarge` for an image past :data:`MAX_IMAGE_PIXELS`."""
    if img.width * img.height > MAX_IMAGE_PIXELS:
        raise ImageTooLarge(f"the image is {img.width}x{img.height}; images here are limited "
                            f"to {MAX_IMAGE_PIXELS} pixels (8192x8192)")


def image_error(exc: BaseException) -> NotAnImage:
    """What a failed open or decode means, in the server's words: :class:`ImageTooLarge`
    for Pillow's decompression-bomb error too, else :class:`NotAnImage` with Pillow's
    reason minus file paths and object reprs (``<_io.BytesIO object at 0x...>``)."""
    if isinstance(exc, NotAnImage):
        return exc
    if isinstance(exc, Image.DecompressionBombError):
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"has {int(pixels[1])} pixels" if pixels else "is too large"
        return ImageTooLarge(f"the image {size}; images here are limited to "
                             f"{MAX_IMAGE_PIXELS} pixels (8192x8192)")
    if isinstance(exc, Image.UnidentifiedImageError):
        return NotAnImage("not a readable image: its content is not an image format "
                          f"(accepted: {', '.join(sorted(FORMATS))})")
    why = re.sub(r"\s*('/[^']*'|<[^>]* at 0x[0-9a-fA-F]+>)", "", str(exc)).strip(" :")
    return NotAnImage(f"not a readable image: {why or type(exc).__name__}")


@contextmanager
def open_image(src: ImageSource) -> Iterator[Image.Image]:
    """``Image.open`` (the header only) within the pixel limit; every failure, also in
    the ``with`` body, is an :func:`image_error`."""
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as img:
            check_pixels(img)
            yield img  # what the caller's decode raises is mapped too
    except MemoryError:
        raise
    except Exception as exc:  # Pillow raises many types for bad data (incl. bombs)
        raise image_error(exc) from None


def load_image(img: Image.Image) -> None:
    """``img.load()``; a file cut short loads as far as it goes, as in ComfyUI (its
    node_helpers.pillow retries with LOAD_TRUNCATED_IMAGES), so an upload, Load Image,
    Load Image (as Mask), /view and /upload/mask all read it the same way."""
    try:
        img.load()
    except OSError:
        with _TRUNCATED:  # set for this retry only, never left on
            before = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = True
            try:
                img.load()
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = before


def header_pixels(sources: Sequence[tuple[str, ImageSource]]) -> int:
    """The pixels of the images ``(label, source)`` in all, read from their headers; the
    first one that is too large or no image raises, its label (if any) before the reason."""
    total = 0
    for label, src in sources:
        try:
            with open_image(src) as img:
                total += img.width * img.height
        except NotAnImage as exc:
            if not label:
                raise
            raise type(exc)(f"{label}: {exc}") from None
    return total


async def run_decode(sources: Sequence[tuple[str, ImageSource]], job: Callable[..., T],
                     *args: Any) -> T:
    """``job(*args)``, which decodes ``sources``, off the event loop. A big job waits in
    the decode pool's queue (:data:`DECODE_SLOTS` at once), holding no thread of the
    default executor that uploads and the rest use; a light one runs there at once."""
    loop = asyncio.get_running_loop()
    pixels = await loop.run_in_executor(None, header_pixels, sources)
    pool = _DECODE_POOL if pixels > LIGHT_PIXELS else None
    return await loop.run_in_executor(pool, job, *args)


def encode_preview(image: Any, quality: int = 85) -> bytes:
    """A PIL image as a JPEG no larger than PREVIEW_MAX on a side."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"preview must be a PIL image, got {type(image).__name__}")
    if max(image.size) > PREVIEW_MAX:
        image = image.copy()
        image.thumbnail((PREVIEW_MAX, PREVIEW_MAX))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(image: Any) -> bytes:
    """A PIL image as a full-size PNG (ComfyUI's ``send_image`` uses compress_level 1)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image, got {type(image).__name__}")
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def check_image(data: bytes) -> str:
    """The Pillow format of ``data``; raises :class:`NotAnImage` unless it verifies.

    ``verify`` checks the file's structure without decoding it: a truncated PNG fails,
    a JPEG cut short passes and loads as far as it goes (:func:`load_image`)."""
    with open_image(data) as img:
        fmt = img.format or ""
        img.verify()
    if fmt not in FORMATS:
        raise NotAnImage(f"image format {fmt or 'unknown'} is not accepted; use one of "
                         f"{', '.join(sorted(FORMATS))}")
    return fmt


def reencode(path: ImageSource, fmt: str, quality: int, channel: str | None,
             preview: bool = False) -> tuple[bytes, str]:
    """Re-encode an image for /view (``preview=webp;90``, ``channel=rgb|a``); a
    ``preview`` is at most :data:`PREVIEW_SIDE` on a side. Run it with :func:`run_decode`."""
    from PIL import ImageOps

    with open_image(path) as img:
        if preview:  # a JPEG decodes at 1/2..1/8 scale straight away
            img.draft(img.mode, (PREVIEW_SIDE, PREVIEW_SIDE))
        load_image(img)
        # as Load Image reads it: upright by its EXIF orientation, a palette or grey
        # image's transparent colour as alpha (the mask editor starts from this view)
        img = ImageOps.exif_transpose(img)
        if "transparency" in img.info and img.mode in ("P", "L", "RGB"):
            img = img.convert("RGBA")
        if channel == "a":
            img = img.getchannel("A") if "A" in img.getbands() else Image.new(
                "L", img.size, 255)
        elif channel == "rgb" or fmt == "jpeg":
            img = img.convert("RGB")
        if fmt == "webp" and img.mode not in ("RGB", "RGBA"):
            img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
        if preview and max(img.size) > PREVIEW_SIDE:
            if img.mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "F"):
                img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
            img.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        buf = io.BytesIO()
        if fmt == "webp":
            img.save(buf, format="WEBP", quality=quality)
            return buf.getvalue(), "image/webp"
        if fmt == "jpeg":
            img.save(buf, format="JPEG", quality=quality)
            return buf.getvalue(), "image/jpeg"
        img.save(buf, format="PNG")
        return buf.getvalue(), "image/png"
