"""Pillow helpers: preview frames, /view re-encoding and upload checks."""

from __future__ import annotations

import io
import threading
from typing import Any

from PIL import Image

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
#: re-encodes decoding at once (each may hold a MAX_IMAGE_PIXELS image)
_DECODING = threading.BoundedSemaphore(2)


class NotAnImage(ValueError):
    """Uploaded bytes are not an image of an accepted format."""


class ImageTooLarge(NotAnImage):
    """An image with more than :data:`MAX_IMAGE_PIXELS` pixels."""


def check_pixels(img: Image.Image) -> None:
    """Raise :class:`ImageTooLarge` for an image past :data:`MAX_IMAGE_PIXELS`."""
    if img.width * img.height > MAX_IMAGE_PIXELS:
        raise ImageTooLarge(f"the image is {img.width}x{img.height}; images here are limited "
                            f"to {MAX_IMAGE_PIXELS} pixels (8192x8192)")


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
    """The Pillow format of ``data``; raises :class:`NotAnImage` unless it verifies."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or ""
            check_pixels(img)
            img.verify()
    except NotAnImage:
        raise
    except Image.UnidentifiedImageError:
        raise NotAnImage("not a readable image: its content is not an image format "
                         f"(accepted: {', '.join(sorted(FORMATS))})") from None
    except Exception as exc:  # Pillow raises many types for bad data (incl. bombs)
        raise NotAnImage(f"not a readable image: {exc}") from None
    if fmt not in FORMATS:
        raise NotAnImage(f"image format {fmt or 'unknown'} is not accepted; use one of "
                         f"{', '.join(sorted(FORMATS))}")
    return fmt


def reencode(path: str, fmt: str, quality: int, channel: str | None) -> tuple[bytes, str]:
    """Re-encode an image for /view (``preview=webp;90``, ``channel=rgb|a``)."""
    from PIL import ImageOps

    with Image.open(path) as img, _DECODING:
        check_pixels(img)
        img.load()
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
        buf = io.BytesIO()
        if fmt == "webp":
            img.save(buf, format="WEBP", quality=quality)
            return buf.getvalue(), "image/webp"
        if fmt == "jpeg":
            img.save(buf, format="JPEG", quality=quality)
            return buf.getvalue(), "image/jpeg"
        img.save(buf, format="PNG")
        return buf.getvalue(), "image/png"
