"""Read a ``.safetensors`` file tensor by tensor, casting as it goes.

``safetensors.torch.load_file`` hands back views into a memory map of the whole
file: every page it touches stays in the process's resident set until the last
view is gone, and casting them (fp16 file → fp32 model) keeps both copies alive
at the peak. Here each tensor gets its own (aligned) allocation in the target dtype,
filled with ``readinto``, or cast from a map of only its own pages that is closed at
once, so the peak is the loaded model plus one tensor's pages, and the file's pages
are otherwise only in the page cache.

The header is validated by ``safetensors.safe_open`` first; it is then parsed
here for the byte offsets, which the library does not expose.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError, safe_open

MAX_HEADER = 100 << 20  # safetensors' own limit
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"),
                     ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attr):
        _DTYPES[_name] = getattr(torch, _attr)

StateDict = dict[str, torch.Tensor]
#: one dtype for every floating tensor, or one per key (None: as stored)
DtypeSpec = torch.dtype | Callable[[str], torch.dtype | None] | None


class WeightsFileError(ValueError):
    """A weights file that cannot be read as what its name says: truncated (an
    interrupted download), corrupt, or another format under a ``.safetensors`` name."""


def invalid_weights_file(path: Path, reason: object) -> WeightsFileError:
    """The error that names the file (with its models folder) and what to do about it."""
    shown = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    return WeightsFileError(
        f"{shown} is not a valid safetensors file ({reason}): it may be truncated (an "
        "interrupted download) or another format renamed; download or export it again")


@contextmanager
def checked(path: Path) -> Iterator[None]:
    """Turn the safetensors library's errors on ``path`` into a :class:`WeightsFileError`."""
    try:
        yield
    except SafetensorError as exc:
        raise invalid_weights_file(Path(path), exc) from None


def read_safetensors(path: Path, *, dtype: DtypeSpec = None
                     ) -> tuple[StateDict, dict[str, str]]:
    """All tensors of ``path`` (floating ones cast to ``dtype`` when given) and its metadata.

    Every tensor owns its memory (no view of the file). A tensor stored in its target
    dtype is read into its own allocation; one that needs a cast is cast straight from a
    map of its pages (no second copy through a read buffer).
    """
    path = Path(path)
    dtype_of = dtype if callable(dtype) else (lambda key: dtype)
    with checked(path), safe_open(str(path), framework="pt") as f:  # validates the header
        metadata = dict(f.metadata() or {})
        header, data_start = _header(path)
        out: StateDict = {}
        with open(path, "rb", buffering=0) as fh:
            # In file order: sequential reads.
            for key in sorted(header, key=lambda k: header[k]["data_offsets"][0]):
                info = header[key]
                stored = _DTYPES.get(info["dtype"])
                want = dtype_of(key)
                if stored is None:  # a dtype this torch has no name for: the library's way
                    out[key] = _cast(f.get_tensor(key).clone(), want)
                    continue
                begin, end = (int(x) for x in info["data_offsets"])
                shape = [int(s) for s in info["shape"]]
                nbytes = end - begin
                target = want if want is not None and stored.is_floating_point else stored
                if target == stored:
                    raw = torch.empty(nbytes, dtype=torch.uint8)
                    _read_into(fh, data_start + begin, raw)
                    out[key] = _typed(raw, stored, shape)
                    continue
                tensor = torch.empty(shape, dtype=target)
                with _pages(fh, data_start + begin, nbytes) as raw:
                    tensor.copy_(_typed(raw, stored, shape))  # the cast reads the page cache
                out[key] = tensor
    return out, metadata


@contextmanager
def _pages(fh: BinaryIO, offset: int, nbytes: int) -> Iterator[torch.Tensor]:
    """``nbytes`` of the file at ``offset`` as a uint8 tensor over a read-only map of just
    those pages (unmapped after: the resident set never holds more than one tensor's);
    read into a buffer instead where the file system cannot map (some network or FUSE
    mounts)."""
    if nbytes == 0:
        yield torch.empty(0, dtype=torch.uint8)
        return
    if offset + nbytes > os.fstat(fh.fileno()).st_size:  # changed since the header check
        raise invalid_weights_file(Path(fh.name), "a tensor runs past its end")
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    how: dict[str, int] = {"access": mmap.ACCESS_READ}
    if hasattr(mmap, "MAP_POPULATE"):  # Linux: fault the pages in at once, not one by one
        how = {"flags": mmap.MAP_SHARED | mmap.MAP_POPULATE, "prot": mmap.PROT_READ}
    try:
        mapped = mmap.mmap(fh.fileno(), offset - start + nbytes, offset=start, **how)
    except OSError:
        raw = torch.empty(nbytes, dtype=torch.uint8)
        _read_into(fh, offset, raw)
        yield raw
        return
    with mapped, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # frombuffer: "not writable"; never written
        raw = torch.frombuffer(mapped, dtype=torch.uint8, offset=offset - start, count=nbytes)
        try:
            yield raw
        finally:
            del raw  # the map cannot close while a tensor still exports its buffer


def read_in_background(path: Path, *, dtype: DtypeSpec = None
                       ) -> Future[tuple[StateDict, dict[str, str]]] | None:
    """Start :func:`read_safetensors` on a thread; None when ``path`` is no ``.safetensors``
    file. The reads and casts release the GIL, so they overlap the caller's imports."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() not in (".safetensors", ".sft"):
        return None
    future: Future[tuple[StateDict, dict[str, str]]] = Future()

    def work() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(read_safetensors(path, dtype=dtype))
        except BaseException as exc:  # handed to whoever waits for the result
            future.set_exception(exc)

    threading.Thread(target=work, name="steerflow-read-weights", daemon=True).start()
    return future


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is None or not tensor.is_floating_point() or tensor.dtype == dtype:
        return tensor
    return tensor.to(dtype)


def _typed(raw: torch.Tensor, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    if raw.numel() == 0:
        return torch.empty(shape, dtype=dtype)
    return raw.view(dtype).reshape(shape)


def _read_into(fh: object, offset: int, buffer: torch.Tensor) -> None:
    """Fill ``buffer`` (uint8, contiguous) from the file at ``offset``."""
    view = memoryview(buffer.numpy()).cast("B")
    fh.seek(offset)  # type: ignore[attr-defined]
    done = 0
    while done < len(view):
        n = fh.readinto(view[done:])  # type: ignore[attr-defined]
        if not n:
            raise invalid_weights_file(Path(fh.name), "a tensor runs past its end")  # type: ignore[attr-defined]
        done += n


def read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """The tensors' shapes and the metadata of a ``.safetensors`` file, from its header
    alone (validated by the library first, as :func:`read_safetensors` does)."""
    with checked(path), safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    header, _ = _header(path)
    shapes = {key: tuple(int(n) for n in info["shape"]) for key, info in header.items()}
    return shapes, metadata


def _header(path: Path) -> tuple[dict[str, dict[str, object]], int]:
    """The tensor entries of the header and where the data starts."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        if size > MAX_HEADER:
            raise ValueError(f"{path.name}: safetensors header too large ({size} bytes)")
        header = json.loads(fh.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def save_file(tensors: dict[str, torch.Tensor], path: Path | str,
              metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, whose I/O failures (a full disk) are raised as
    :class:`OSError` with their errno, as any other write's: safetensors raises its own
    ``SafetensorError`` ("I/O error: No space left on device (os error 28)"), which the
    savers' ``except OSError`` would miss and the user would read raw."""
    from safetensors.torch import save_file as write

    try:
        write(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        found = _OS_ERROR.search(str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from exc
