"""File encoders Save Image (Advanced) needs beyond Pillow's: 16-bit PNG and 32-bit float
OpenEXR (written here with numpy and zlib), and the AVIF wrapper around Pillow's encoder.

Each takes one image ``[H, W, C]`` (C 1, 3 or 4: grey, RGB, RGBA) as a numpy array and
returns the file's bytes; metadata (the prompt and workflow, as ComfyUI embeds them) is a
``{key: JSON-able}`` mapping.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXR_MAGIC = b"\x76\x2f\x31\x01"
_PNG_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}  # channels → grey, RGB, RGBA
_PNG_KEYWORD_MAX = 79
_EXR_NAME_MAX = 255
_EXR_SHORT_NAME = 31  # longer names need the "long names" version flag
# CIE 1931 xy of R, G, B and white (D65), for the EXR ``chromaticities`` attribute.
CHROMATICITIES = {
    "BT.709": (0.6400, 0.3300, 0.3000, 0.6000, 0.1500, 0.0600, 0.3127, 0.3290),
    "BT.2020": (0.7080, 0.2920, 0.1700, 0.7970, 0.1310, 0.0460, 0.3127, 0.3290),
}


def _channels(pixels: np.ndarray) -> int:
    if pixels.ndim != 3 or pixels.shape[-1] not in _PNG_COLOUR_TYPES or 0 in pixels.shape:
        raise ValueError(f"an image to save must be [H, W, C] with C 1, 3 or 4 and at least "
                         f"one pixel, got {tuple(pixels.shape)}")
    return int(pixels.shape[-1])


# --- PNG, 16 bits per channel ---------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_text_chunks(metadata: Mapping[str, Any]) -> bytes:
    """tEXt chunks ``key\\0json`` (the JSON is ASCII: non-ASCII characters escaped)."""
    out = b""
    for key, value in metadata.items():
        name = str(key).encode("latin-1", "replace")[:_PNG_KEYWORD_MAX]
        out += _png_chunk(b"tEXt", name + b"\x00" + json.dumps(value).encode("ascii"))
    return out


def encode_png16(pixels: np.ndarray, metadata: Mapping[str, Any], level: int = 4) -> bytes:
    """A 16-bit PNG of ``pixels`` (uint16 ``[H, W, C]``), every row filtered with PNG's
    "Up" filter, ``metadata`` as tEXt chunks before the image data."""
    import numpy as np

    channels = _channels(pixels)
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    rows = np.ascontiguousarray(pixels.astype(">u2")).view(np.uint8).reshape(height, -1)
    up = rows.copy()
    up[1:] -= rows[:-1]  # uint8 arithmetic wraps, as the filter wants
    filtered = np.empty((height, up.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2  # filter type Up
    filtered[:, 1:] = up
    header = struct.pack(">IIBBBBB", width, height, 16, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    return (PNG_SIGNATURE + _png_chunk(b"IHDR", header) + png_text_chunks(metadata)
            + _png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), level))
            + _png_chunk(b"IEND", b""))


# --- OpenEXR, 32-bit float, uncompressed scanlines -----------------------------------------

def _exr_attribute(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\x00" + kind.encode() + b"\x00" + struct.pack("<i", len(value)) \
        + value


def _exr_names(channels: int) -> list[str]:
    # Alphabetical, as OpenEXR stores channels.
    return {1: ["Y"], 3: ["B", "G", "R"], 4: ["A", "B", "G", "R"]}[channels]


def encode_exr(pixels: np.ndarray, metadata: Mapping[str, Any],
               primaries: str | None = None) -> bytes:
    """A single-part scanline OpenEXR of float32 ``pixels`` ``[H, W, C]`` (channels Y;
    R, G, B; or R, G, B, A), uncompressed. ``metadata`` becomes ``string`` header
    attributes (the JSON of each value); ``primaries`` (a :data:`CHROMATICITIES` key) the
    ``chromaticities`` attribute."""
    import numpy as np

    channels = _channels(pixels)
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    names = _exr_names(channels)
    order = {1: [0], 3: [2, 1, 0], 4: [3, 2, 1, 0]}[channels]  # index of each name in C
    chlist = b"".join(n.encode() + b"\x00" + struct.pack("<iB3xii", 2, 0, 1, 1)
                      for n in names) + b"\x00"  # 2: FLOAT, not perceptually linear
    window = struct.pack("<iiii", 0, 0, width - 1, height - 1)
    attributes = [
        _exr_attribute("channels", "chlist", chlist),
        _exr_attribute("compression", "compression", b"\x00"),  # NO_COMPRESSION
        _exr_attribute("dataWindow", "box2i", window),
        _exr_attribute("displayWindow", "box2i", window),
        _exr_attribute("lineOrder", "lineOrder", b"\x00"),  # INCREASING_Y
        _exr_attribute("pixelAspectRatio", "float", struct.pack("<f", 1.0)),
        _exr_attribute("screenWindowCenter", "v2f", struct.pack("<ff", 0.0, 0.0)),
        _exr_attribute("screenWindowWidth", "float", struct.pack("<f", 1.0)),
    ]
    if primaries is not None:
        attributes.append(_exr_attribute("chromaticities", "chromaticities",
                                         struct.pack("<8f", *CHROMATICITIES[primaries])))
    long_names = False
    for key, value in metadata.items():
        name = str(key)
        if not name or "\x00" in name or len(name.encode()) > _EXR_NAME_MAX:
            raise ValueError(f"metadata key {name[:80]!r} cannot name an EXR attribute "
                             f"(1 to {_EXR_NAME_MAX} bytes, no NUL)")
        long_names |= len(name.encode()) > _EXR_SHORT_NAME
        attributes.append(_exr_attribute(name, "string", json.dumps(value).encode()))
    version = struct.pack("<I", 2 | (0x400 if long_names else 0))
    header = EXR_MAGIC + version + b"".join(attributes) + b"\x00"
    # One chunk per scanline: int32 y, int32 byte count, then each channel's row.
    line_bytes = channels * width * 4
    planar = np.ascontiguousarray(pixels[..., order].astype("<f4").transpose(0, 2, 1))
    lines = np.empty((height, 8 + line_bytes), np.uint8)
    lines[:, :8] = np.stack([np.arange(height, dtype="<i4"),
                             np.full(height, line_bytes, "<i4")], axis=1).view(np.uint8)
    lines[:, 8:] = planar.reshape(height, -1).view(np.uint8)
    first = len(header) + 8 * height
    offsets = (first + np.arange(height, dtype="<u8") * (8 + line_bytes)).astype("<u8")
    return header + offsets.tobytes() + lines.tobytes()


# --- AVIF through Pillow (8-bit) ------------------------------------------------------------

def avif_quality(crf: int) -> int:
    """ComfyUI's ``crf`` (AV1 quantizer 1-63, lower is better) as Pillow's ``quality``
    (0-100, which libavif maps back to a quantizer: q = (100 - quality) · 63 / 100)."""
    return max(0, min(100, round(100 - crf * 100 / 63)))


def avif_exif(metadata: Mapping[str, Any]) -> Any:
    """ComfyUI's EXIF layout for the workflow: ``prompt:<json>`` in tag 0x0110 (Model),
    the other keys ``key:<json>`` from 0x010F (Make) down, as its WebP and AVIF saves do."""
    from PIL import Image

    exif = Image.Exif()
    tag = 0x010F
    for key, value in metadata.items():
        text = f"{key}:{json.dumps(value)}"
        if key == "prompt":
            exif[0x0110] = text
        else:
            exif[tag] = text
            tag -= 1
    return exif


def encode_avif(frames: list[np.ndarray], metadata: Mapping[str, Any], crf: int,
                fps: float | None = None) -> bytes:
    """An 8-bit AVIF of uint8 ``frames`` ``[H, W, C]``: one still image, or with ``fps``
    an animation (Pillow writes no loop count: players loop it forever)."""
    import io

    from PIL import Image

    images = []
    for pixels in frames:
        channels = _channels(pixels)
        images.append(Image.fromarray(pixels[..., 0] if channels == 1 else pixels))
    options: dict[str, Any] = {"quality": avif_quality(crf), "exif": avif_exif(metadata)}
    if fps is not None:
        options.update(save_all=True, append_images=images[1:],
                       duration=max(1, round(1000 / fps)))
    buffer = io.BytesIO()
    images[0].save(buffer, format="AVIF", **options)
    return buffer.getvalue()
