"""Bytes a cached value holds per device type: the output cache's weighing scale."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

DeviceBytes = dict[str, int]
_NUMBERS = (int, float, bool, complex)
_BUFFERS = (str, bytes, bytearray)


def value_nbytes(value: Any) -> DeviceBytes:
    """Bytes held by a value per device type ("cpu", "cuda", ...).

    Counts torch tensors and ``torch.nn.Module`` parameters and buffers, numpy
    arrays, PIL images, ``str``/``bytes``/``bytearray``/``memoryview``, and
    containers and dataclasses of these; objects can report themselves through
    ``__cache_nbytes__()``. Memory shared within one value (tensor storages,
    numpy bases, an object referenced twice) is counted once. Other objects
    count 0. torch, numpy and PIL are never imported here: a value can only
    hold their types once they are in ``sys.modules``.
    """
    flat = _flat_nbytes(value)
    if flat is not None:
        return {"cpu": flat} if flat else {}
    if isinstance(value, tuple) and len(value) == 1:  # a node's usual 1-output tuple
        value = value[0]
    torch = sys.modules.get("torch")
    tensor_t = getattr(torch, "Tensor", None)
    module_t = getattr(getattr(torch, "nn", None), "Module", None)
    ndarray_t = getattr(sys.modules.get("numpy"), "ndarray", None)
    image_t = getattr(sys.modules.get("PIL.Image"), "Image", None)

    total: DeviceBytes = {}
    seen_ids: set[int] = set()
    seen_memory: set[tuple[str, int]] = set()  # (device type, base address)
    stack = [value]
    while stack:
        obj = stack.pop()
        if obj is None or isinstance(obj, _NUMBERS) or id(obj) in seen_ids:
            continue
        seen_ids.add(id(obj))
        if isinstance(obj, _BUFFERS):
            _add(total, "cpu", _buffer_nbytes(obj))
        elif tensor_t is not None and isinstance(obj, tensor_t):
            _add_tensor(obj, total, seen_memory)
        elif module_t is not None and isinstance(obj, module_t):
            for t in obj.parameters():
                _add_tensor(t, total, seen_memory)
            for t in obj.buffers():
                _add_tensor(t, total, seen_memory)
        elif ndarray_t is not None and isinstance(obj, ndarray_t):
            _add_array(obj, ndarray_t, total, seen_memory, stack)
        elif image_t is not None and isinstance(obj, image_t):
            _add(total, "cpu", _image_nbytes(obj))
        elif isinstance(obj, memoryview):
            # the exporter holds the memory; a view of a bytes object counts that object
            if isinstance(obj.obj, _BUFFERS):
                stack.append(obj.obj)
            else:
                _add(total, "cpu", obj.nbytes)
        elif hasattr(obj, "__cache_nbytes__"):
            for dev, n in obj.__cache_nbytes__().items():
                _add(total, dev, n)
        else:
            stack.extend(members(obj))
    return total


#: What objects of a library's own types hold (neither containers nor dataclasses), by
#: type: a spandrel model descriptor holds its torch module. Filled by :func:`register_members`.
_MEMBERS: dict[type, Callable[[Any], Iterable[Any]]] = {}


def register_members(kind: type, held: Callable[[Any], Iterable[Any]]) -> None:
    """Teach the walks over values (the cache's weighing, the movers) what an object of
    ``kind`` holds, so a model inside such a wrapper is counted and can be offloaded."""
    _MEMBERS[kind] = held


def members(obj: Any) -> list[Any]:
    """What a container holds, for walks over a value: a dict's values, a list's, tuple's
    or set's items, a dataclass's fields, or what :func:`register_members` says; nothing
    for other objects."""
    if _MEMBERS:
        for kind in type(obj).__mro__:
            if kind in _MEMBERS:
                return list(_MEMBERS[kind](obj))
    if isinstance(obj, dict):
        return list(obj.values())
    if isinstance(obj, list | tuple | set | frozenset):
        return list(obj)
    if hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
        return [getattr(obj, f) for f in obj.__dataclass_fields__]
    return []


def _flat_nbytes(value: Any) -> int | None:
    """The fast path: bytes of a scalar, a string, or a tuple/list of those (or of
    objects reporting CPU bytes only through ``__cache_nbytes__``); else None."""
    if value is None or isinstance(value, _NUMBERS):
        return 0
    if isinstance(value, _BUFFERS):
        return _buffer_nbytes(value)
    if isinstance(value, tuple | list) and len(value) <= 16:
        n = 0
        reported: list[int] = []  # ids: an object referenced twice counts once
        for v in value:
            if v is None or isinstance(v, _NUMBERS):
                continue
            if isinstance(v, _BUFFERS):
                n += _buffer_nbytes(v)  # a string repeated in the tuple counts twice: harmless
                continue
            report = getattr(type(v), "__cache_nbytes__", None)
            if report is None:
                return None
            if id(v) in reported:
                continue
            reported.append(id(v))
            sizes = report(v)
            if any(device != "cpu" for device in sizes):
                return None
            n += sizes.get("cpu", 0)
        return n
    return None


def _buffer_nbytes(obj: str | bytes | bytearray) -> int:
    # A non-ASCII str stores 1, 2 or 4 bytes per character: getsizeof knows which.
    if isinstance(obj, str) and not obj.isascii():
        return sys.getsizeof(obj)
    return len(obj)


def _add(total: DeviceBytes, device: str, n: int) -> None:
    if n:
        total[device] = total.get(device, 0) + n


def _add_tensor(t: Any, total: DeviceBytes, seen: set[tuple[str, int]]) -> None:
    try:
        storage = t.untyped_storage()
        key = (t.device.type, storage.data_ptr())
        nbytes = storage.nbytes()
    except (RuntimeError, NotImplementedError):  # meta/sparse tensors
        key, nbytes = (t.device.type, id(t)), t.numel() * t.element_size()
    if key in seen:
        return
    seen.add(key)
    _add(total, t.device.type, nbytes)


def _add_array(arr: Any, ndarray_t: type, total: DeviceBytes, seen: set[tuple[str, int]],
               stack: list[Any]) -> None:
    """A numpy array: its root base's buffer, once per value (views share it)."""
    root = arr
    while isinstance(root.base, ndarray_t):
        root = root.base
    # The root's address matches a tensor made by torch.from_numpy: counted once too.
    key = ("cpu", root.__array_interface__["data"][0])
    if root.nbytes and key not in seen:
        seen.add(key)
        _add(total, "cpu", root.nbytes)
    if arr.dtype.hasobject:  # only pointers are in the buffer; the objects live apart
        stack.extend(arr.ravel().tolist())


# Bytes per pixel in Pillow's memory: multi-band images use 4 bytes per pixel.
_PIL_PIXEL = {"1": 1, "L": 1, "P": 1, "I": 4, "F": 4, "I;16": 2, "I;16L": 2, "I;16B": 2,
              "I;16N": 2}


def _image_nbytes(img: Any) -> int:
    width, height = img.size
    return width * height * _PIL_PIXEL.get(img.mode, 4)
