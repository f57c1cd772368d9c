"""Up-front memory checks for nodes whose output size the user's numbers decide.

Inputs keep ComfyUI's bounds (``MAX_RESOLUTION`` 16384 a side, batches up to 4096), but
some combinations inside them cannot exist on any machine: an Empty Latent Image of
4096 latents for 16384x16384 pixels is 256 GiB. Instead of letting the allocation fail
deep inside torch (or the kernel kill the worker), a node estimates the bytes its result
will take and calls :func:`check_fits` first, which refuses with a ``ValueError`` that
names the inputs to change when the estimate exceeds the memory free on the device
(:func:`nodes.diffusion.vae_codec.available_bytes`: free GPU memory, or the CPU's
MemAvailable). Sizes that fit run exactly as before.

Torch-free at import, like every node module.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

FLOAT32 = 4  # bytes of an IMAGE, MASK or LATENT element
NAME_MAX = 255  # bytes in one file or folder name (ext4, APFS, NTFS)


def check_fits(nbytes: int, device: Any, what: str, fix: str) -> None:
    """Raise ``ValueError`` when ``nbytes`` will not fit in the memory free on ``device``.

    ``what`` says what would be made ("4096 latents of 16384x16384 px"), ``fix`` what to
    change ("lower batch_size, width or height").
    """
    from nodes.diffusion import vae_codec  # looked up per call: tests patch it

    free = vae_codec.available_bytes(_as_device(device))
    if nbytes > free:
        raise ValueError(f"{what} would take {format_bytes(nbytes)}, more than the "
                         f"{format_bytes(free)} free on {_name(device)}: {fix}")


def is_out_of_memory(exc: BaseException) -> bool:
    """torch ran out of memory: CUDA's ``OutOfMemoryError``, or the CPU allocator's
    ``RuntimeError`` "can't allocate memory"."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


@contextmanager
def out_of_memory_as_value_error(device: Any, what: str, fix: str) -> Iterator[None]:
    """The second line behind :func:`check_fits`, for work whose peak an estimate only
    bounds from below: torch running out of memory inside the block becomes a
    ``ValueError`` that says what ran out and what to change (``fix``); every other error
    passes unchanged."""
    try:
        yield
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        raise ValueError(f"{what} ran out of memory on {_name(device)}: {fix}") from exc


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _as_device(device: Any) -> Any:
    import torch

    return torch.device(device) if device is not None else torch.device("cpu")


def _name(device: Any) -> str:
    text = str(device) if device is not None else "cpu"
    return "the CPU (RAM)" if text == "cpu" else text


def name_problem(name: str, reserved: int) -> str | None:
    """Why ``name`` (folders separated by '/') cannot name a file the node writes: a NUL
    character, or a part over :data:`NAME_MAX` bytes, the last one with the ``reserved``
    bytes the node adds to it (a counter, an extension, a temporary file's marks). None
    when it can."""
    if "\x00" in name:
        return "a file name cannot contain a NUL character"
    hidden = next((c for c in name if unicodedata.category(c) in ("Cc", "Cf")), None)
    if hidden is not None:  # a newline, a tab, a right-to-left override that hides the suffix
        return (f"a file name cannot contain the control character U+{ord(hidden):04X}: "
                "remove it")
    parts = name.replace("\\", "/").split("/")
    for i, part in enumerate(parts):
        limit = NAME_MAX - (reserved if i == len(parts) - 1 else 0)
        size = len(part.encode("utf-8", "surrogatepass"))
        if size > limit:
            shown = part if len(part) <= 40 else part[:37] + "..."
            return (f"{shown!r} is {size} bytes long; a file or folder name here may have "
                    f"at most {limit}: shorten it")
    return None


def check_latent(samples: Any, what: str) -> None:
    """LATENT samples ``[B, C, h, w]`` with at least one sample and one pixel; else a
    ``ValueError`` that names ``what`` and the shape it got."""
    if samples.dim() != 4 or 0 in samples.shape:
        raise ValueError(f"{what} must be a latent [B, C, h, w] with at least one sample "
                         f"and one pixel, got {tuple(samples.shape)}")


def check_image(image: Any, what: str, channels: tuple[int, ...] = (1, 3, 4)) -> None:
    """An IMAGE ``[B, H, W, C]`` with at least one image, one pixel, and ``C`` in
    ``channels``; else a ``ValueError`` that names ``what`` and the shape it got."""
    import torch

    if not isinstance(image, torch.Tensor) or image.dim() != 4 \
            or image.shape[-1] not in channels:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        allowed = ", ".join(map(str, channels))
        raise ValueError(f"the {what} must be an IMAGE [B, H, W, C] with C in ({allowed}), "
                         f"got {shape}")
    if 0 in image.shape[:3]:
        raise ValueError(f"the {what} is empty (shape {tuple(image.shape)}): it needs at "
                         "least one image of at least 1x1 pixels")
