"""The output cache: node outputs keyed by signature, LRU within a byte budget.

A node's signature hashes its type, version, constant inputs, fingerprint and
the signatures (and output index) of what feeds it, so equal signatures mean
equal outputs: the cache is shared across prompts and workflows. Entries that
the running prompt still needs are pinned and never evicted.

When an accelerator ("cuda", ...) is over its budget, least-recently-used entries
are first *offloaded* to the CPU by a registered :class:`Mover` (the node packs
register one for torch models; the engine knows neither torch nor diffusers) and
moved back when next read; only what cannot move, or a CPU over its budget, is
evicted. A model bigger than a device's whole budget cannot fit there at all: a
mover with ``offload_sequential`` keeps its weights on the CPU and moves them to the
device layer by layer as it runs (sequential offload), until the entry is read at a
time when the model fits whole again.
"""

from __future__ import annotations

import itertools
import re
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.signature import signature  # noqa: F401  (re-exported: its former home)

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
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
            stack.extend(getattr(obj, f) for f in obj.__dataclass_fields__)
    return total


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


class Mover(Protocol):
    """Moves what a cached value holds between an accelerator and the CPU.

    ``offload(value, device_type)`` moves the parts of ``value`` on ``device_type``
    to the CPU and returns ``(moved value, home)`` (the value may be changed in
    place and returned), or None when it holds nothing it can move. ``restore(value,
    home)`` moves them back and returns the value. ``home`` is the mover's own
    token (e.g. "cuda:0"), kept by the cache in between.
    """

    def offload(self, value: Any, device_type: str) -> tuple[Any, Any] | None: ...

    def restore(self, value: Any, home: Any) -> Any: ...


class SequentialMover(Mover, Protocol):
    """A mover that can also run models too big for a device's budget in pieces.

    ``offload_sequential(value, device_type, budget)`` makes every model in ``value``
    on ``device_type`` whose own bytes exceed ``budget`` keep its weights on the CPU
    and compute on the device one submodule at a time; it returns ``(value, home)``
    or None when no model is that big. ``restore(value, home)`` undoes it.
    Optionally, ``adopt_sequential(value, device_type)`` returns ``(home, bytes whole)``
    for models a loader put on sequential offload onto ``device_type`` before they were
    ever cached (too big to go there whole even once), else None: the cache then treats
    them as its own sequential models.
    """

    def offload_sequential(self, value: Any, device_type: str, budget: int
                           ) -> tuple[Any, Any] | None: ...


_MOVERS: list[Mover] = []


def register_mover(mover: Mover) -> None:
    """Let every cache offload values through ``mover`` (tried in registration order)."""
    if mover not in _MOVERS:
        _MOVERS.append(mover)


def unregister_mover(mover: Mover) -> None:
    if mover in _MOVERS:
        _MOVERS.remove(mover)


@dataclass
class CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None
    nbytes: DeviceBytes
    pins: int = 0
    # Set while the outputs are offloaded: (the mover that did it, its home token).
    offloaded: tuple[Mover, Any] | None = None
    # Set while some of its models run with sequential offload: (the mover, its home
    # token, the bytes per device they would take whole).
    sequential: tuple[Mover, Any, DeviceBytes] | None = None


@dataclass
class OutputCache:
    """LRU cache of node outputs with a per-device byte budget.

    ``budgets`` maps a device type to the bytes it may hold; a device without a
    budget is unlimited. Pinned entries are never evicted, even over budget.
    ``max_entries`` bounds the count too: numeric outputs weigh 0 bytes, and a
    long-running server would otherwise keep every one it ever computed.
    """

    budgets: dict[str, int] = field(default_factory=dict)
    max_entries: int = 100_000
    entries: OrderedDict[str, CacheEntry] = field(default_factory=OrderedDict)
    used: DeviceBytes = field(default_factory=dict)
    evictions: int = 0
    offloads: int = 0
    restores: int = 0
    sequential_offloads: int = 0
    # None: the registered movers (register_mover); [] turns offloading off.
    movers: list[Mover] | None = None

    def __contains__(self, sig: str) -> bool:
        return sig in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, sig: str) -> CacheEntry | None:
        """The entry (most recently used now), moved back to its device if offloaded."""
        entry = self.entries.get(sig)
        if entry is not None:
            self.entries.move_to_end(sig)
            if entry.sequential is not None and self._fits_whole(entry):
                self._end_sequential(entry)
            if entry.offloaded is not None:
                self._restore(entry)
        return entry

    def _sequential_movers(self) -> list[SequentialMover]:
        movers = _MOVERS if self.movers is None else self.movers
        return [m for m in movers if hasattr(m, "offload_sequential")]  # type: ignore[misc]

    def _place_sequential(self, entry: CacheEntry) -> None:
        """Run the models of ``entry`` that alone exceed an accelerator's budget with
        sequential offload (their bytes then count on the CPU), or adopt those a loader
        already runs so."""
        if entry.sequential is not None:
            return
        for device, limit in self.budgets.items():
            if device == "cpu":
                continue
            for mover in self._sequential_movers():
                adopt = getattr(mover, "adopt_sequential", None)
                adopted = adopt(entry.outputs, device) if adopt is not None else None
                if adopted is not None:  # loaded straight into sequential offload
                    entry.sequential = (mover, adopted[0], {device: adopted[1]})
                    self.sequential_offloads += 1
                    return
            if entry.nbytes.get(device, 0) <= limit:
                continue
            for mover in self._sequential_movers():
                before = dict(entry.nbytes)
                moved = mover.offload_sequential(entry.outputs, device, limit)
                if moved is None:
                    continue
                self._reweigh(entry, moved[0])
                whole = {d: n - entry.nbytes.get(d, 0) for d, n in before.items()
                         if n > entry.nbytes.get(d, 0)}
                entry.sequential = (mover, moved[1], whole)
                self.sequential_offloads += 1
                return

    def _fits_whole(self, entry: CacheEntry) -> bool:
        assert entry.sequential is not None
        whole = entry.sequential[2]
        return all(d not in self.budgets or entry.nbytes.get(d, 0) + n <= self.budgets[d]
                   for d, n in whole.items() if d != "cpu")

    def _end_sequential(self, entry: CacheEntry) -> None:
        """The budget grew (or the model shrank): put the models back on their device."""
        assert entry.sequential is not None
        mover, home, _ = entry.sequential
        entry.sequential = None
        self._reweigh(entry, mover.restore(entry.outputs, home))
        entry.pins += 1  # make room around it, as _restore does
        try:
            self.evict()
        finally:
            entry.pins -= 1

    def _restore(self, entry: CacheEntry) -> None:
        assert entry.offloaded is not None
        mover, home = entry.offloaded
        outputs = mover.restore(entry.outputs, home)
        entry.offloaded = None
        self._reweigh(entry, outputs)
        self.restores += 1
        self._place_sequential(entry)
        # Make room around it; held meanwhile so that it is not sent straight back.
        entry.pins += 1
        try:
            self.evict()
        finally:
            entry.pins -= 1

    def put(self, sig: str, outputs: tuple[Any, ...], ui: dict[str, Any] | None = None,
            *, pins: int = 0) -> CacheEntry:
        old = self.entries.pop(sig, None)
        if old is not None:
            self._account(old.nbytes, -1)
            pins += old.pins
        nbytes = value_nbytes(outputs)
        if ui:  # a UI payload (a shown text) can be as large as any output
            for dev, n in value_nbytes(ui).items():
                nbytes[dev] = nbytes.get(dev, 0) + n
        entry = CacheEntry(outputs, ui, nbytes, pins)
        self.entries[sig] = entry
        if entry.nbytes:  # numbers cannot push a device over its budget
            self._account(entry.nbytes, +1)
            self._place_sequential(entry)
            self.evict()
        if len(self.entries) > self.max_entries:
            self._evict_oldest(len(self.entries) - self.max_entries)
        return entry

    def _evict_oldest(self, count: int) -> None:
        # Oldest first; a few extra candidates in case some at the front are pinned.
        for sig in list(itertools.islice(self.entries, count + 64)):
            entry = self.entries[sig]
            if entry.pins:
                continue
            del self.entries[sig]
            self._account(entry.nbytes, -1)
            self.evictions += 1
            count -= 1
            if count <= 0:
                return

    def pin(self, sig: str) -> None:
        entry = self.entries.get(sig)
        if entry is not None:
            entry.pins += 1

    def unpin(self, sig: str) -> None:
        entry = self.entries.get(sig)
        if entry is not None and entry.pins > 0:
            entry.pins -= 1
            if entry.pins == 0 and entry.nbytes:
                self.evict()

    def evict(self) -> None:
        """Make every device fit: offload least-recently-used unpinned entries from an
        accelerator to the CPU where a mover can, then drop the least recently used."""
        over = self._over_budget()
        if not over:
            return
        if over - {"cpu"}:
            for device in sorted(over - {"cpu"}):
                self._offload(device)
            over = self._over_budget()
            if not over:
                return
        for sig in list(self.entries):
            entry = self.entries[sig]
            if entry.pins or not any(entry.nbytes.get(d) for d in over):
                continue
            del self.entries[sig]
            self._account(entry.nbytes, -1)
            self.evictions += 1
            over = self._over_budget()
            if not over:
                return

    def _offload(self, device: str) -> None:
        movers = _MOVERS if self.movers is None else self.movers
        if not movers:
            return
        for entry in list(self.entries.values()):
            if self.used.get(device, 0) <= self.budgets[device]:
                return
            if entry.pins or entry.offloaded is not None or not entry.nbytes.get(device):
                continue
            for mover in movers:
                moved = mover.offload(entry.outputs, device)
                if moved is not None:
                    entry.offloaded = (mover, moved[1])
                    self._reweigh(entry, moved[0])
                    self.offloads += 1
                    break

    def _reweigh(self, entry: CacheEntry, outputs: tuple[Any, ...]) -> None:
        """Replace an entry's outputs and account for where their bytes are now."""
        self._account(entry.nbytes, -1)
        entry.outputs = outputs
        nbytes = value_nbytes(outputs)
        if entry.ui:
            for dev, n in value_nbytes(entry.ui).items():
                nbytes[dev] = nbytes.get(dev, 0) + n
        entry.nbytes = nbytes
        self._account(nbytes, +1)

    def clear(self) -> None:
        """Drop every unpinned entry."""
        for sig in [s for s, e in self.entries.items() if not e.pins]:
            self._account(self.entries.pop(sig).nbytes, -1)

    def _over_budget(self) -> set[str]:
        return {d for d, limit in self.budgets.items() if self.used.get(d, 0) > limit}

    def _account(self, nbytes: DeviceBytes, sign: int) -> None:
        for dev, n in nbytes.items():
            self.used[dev] = self.used.get(dev, 0) + sign * n


# --- budgets ----------------------------------------------------------------------
BUDGET_DEVICES = ("cpu", "cuda", "mps", "xpu")
MAX_BUDGET = 1 << 50  # 1 PiB: more is a typo, not a machine
BUDGET_EXAMPLES = "'8GiB', '512MiB', '8000000', '50%' or 'cpu=4GiB,cuda=80%'"
_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
    "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}
_AMOUNT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(%|[a-z]*)")

Amount = tuple[str, float]  # ("bytes", n) or ("percent", p)
MemoryOf = Callable[[str], int | None]


def check_budget(text: str) -> list[tuple[str | None, Amount]]:
    """Parse a cache budget without asking any device; raises ValueError.

    Returns ``(device or None for a bare value, amount)`` entries; use it to
    validate an option where torch must not be imported (the server).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty cache budget; expected {BUDGET_EXAMPLES}")
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1 and "=" not in parts[0]:
        return [(None, _parse_amount(parts[0], text))]
    entries: list[tuple[str | None, Amount]] = []
    for part in parts:
        device, sep, amount = (x.strip() for x in part.partition("="))
        if not sep:
            raise _budget_error(text, f"{part!r} names no device: give every entry of a "
                                      "list as DEVICE=SIZE")
        device = device.lower()
        if ":" in device:
            raise _budget_error(text, f"budgets are per device type: use "
                                      f"{device.partition(':')[0]!r}, not {device!r}")
        if device not in BUDGET_DEVICES:
            raise _budget_error(text, f"unknown device {device!r} (expected one of "
                                      f"{', '.join(BUDGET_DEVICES)})")
        if any(d == device for d, _ in entries):
            raise _budget_error(text, f"device {device!r} is given twice")
        entries.append((device, _parse_amount(amount, text)))
    return entries


def parse_budget(text: str, *, memory: MemoryOf | None = None) -> dict[str, int]:
    """Bytes per device type from a cache-budget string.

    Accepted: bytes with an optional unit (``8000000``, ``8GB`` = 8*10^9,
    ``8GiB`` or ``8G`` = 8*2^30, ``512MiB``, ``1.5GiB``), a percentage of the
    device's memory (``50%``), or a per-device list (``cpu=4GiB,cuda=80%``).
    A bare value applies to cpu and, when the machine has one, cuda.
    ``memory(device)`` gives a device type's total bytes or None when absent
    (default :func:`engine.session.device_memory`; it imports torch only to
    ask about cuda). A percentage of an absent device is left out.
    """
    entries = check_budget(text)
    if memory is None:
        from engine.session import device_memory as memory  # lazily: session imports us
    if entries[0][0] is None:
        amount = entries[0][1]
        entries = [("cpu", amount)]
        if memory("cuda") is not None:
            entries.append(("cuda", amount))
    budgets: dict[str, int] = {}
    for device, (kind, value) in entries:
        assert device is not None
        if kind == "bytes":
            budgets[device] = int(value)
            continue
        total = memory(device)
        if total is None:
            if device == "cpu":
                raise _budget_error(text, "cannot tell how much memory this machine has; "
                                          "give the cpu budget in bytes")
            continue  # e.g. cuda=80% on a machine without a GPU: nothing to bound
        budgets[device] = int(total * value / 100)
    return budgets


def _parse_amount(amount: str, text: str) -> Amount:
    match = _AMOUNT.fullmatch(amount.strip().lower())
    if match is None and amount.strip().startswith("-"):
        raise _budget_error(text, f"{amount!r} is negative")
    if match is None:
        raise _budget_error(text, f"{amount!r} is not a size")
    number, unit = float(match.group(1)), match.group(2)
    if unit == "%":
        if number > 100:
            raise _budget_error(text, f"{amount!r} is over 100%")
        return ("percent", number)
    if unit not in _UNITS:
        raise _budget_error(text, f"unknown unit {match.group(2)!r} (use B, KB, MB, GB, TB "
                                  "for powers of 1000 or KiB, MiB, GiB, TiB for 1024)")
    nbytes = number * _UNITS[unit]
    if nbytes > MAX_BUDGET:
        raise _budget_error(text, f"{amount!r} is more than 1 PiB")
    return ("bytes", nbytes)


def _budget_error(text: str, reason: str) -> ValueError:
    return ValueError(f"bad cache budget {text!r}: {reason}; expected e.g. {BUDGET_EXAMPLES}")
