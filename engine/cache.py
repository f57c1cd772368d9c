"""The output cache: node outputs keyed by signature, LRU within a byte budget.

A node's signature hashes its type, version, constant inputs, fingerprint and
the signatures (and output index) of what feeds it, so equal signatures mean
equal outputs: the cache is shared across prompts and workflows. Entries that
the running prompt still needs are pinned and never evicted.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

DeviceBytes = dict[str, int]
_SCALARS = (int, float, str, bool, bytes)


def signature(type_id: str, version: int, constants: dict[str, Any], fingerprint: Any,
              upstream: list[tuple[str, str, int]]) -> str:
    """A stable hash of everything a node's outputs depend on."""
    payload = json.dumps([type_id, version, constants, fingerprint, upstream],
                         sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


def value_nbytes(value: Any) -> DeviceBytes:
    """Bytes held by a value per device type ("cpu", "cuda", ...).

    Counts tensors, ``torch.nn.Module`` parameters and buffers, containers and
    dataclasses; objects can report themselves through ``__cache_nbytes__()``.
    Storage shared between tensors of one value is counted once.
    """
    if value is None or isinstance(value, _SCALARS):
        return {}
    if isinstance(value, tuple) and all(v is None or isinstance(v, _SCALARS) for v in value):
        return {}
    import torch

    total: DeviceBytes = {}
    seen_ids: set[int] = set()
    seen_storage: set[tuple[str, int]] = set()
    stack = [value]
    while stack:
        obj = stack.pop()
        if obj is None or isinstance(obj, int | float | str | bool | bytes) or id(obj) in seen_ids:
            continue
        seen_ids.add(id(obj))
        if isinstance(obj, torch.Tensor):
            _add_tensor(obj, total, seen_storage)
        elif isinstance(obj, torch.nn.Module):
            for t in obj.parameters():
                _add_tensor(t, total, seen_storage)
            for t in obj.buffers():
                _add_tensor(t, total, seen_storage)
        elif hasattr(obj, "__cache_nbytes__"):
            for dev, n in obj.__cache_nbytes__().items():
                total[dev] = total.get(dev, 0) + n
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
            stack.extend(getattr(obj, f) for f in obj.__dataclass_fields__)
    return total


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
    total[t.device.type] = total.get(t.device.type, 0) + nbytes


@dataclass
class CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None
    nbytes: DeviceBytes
    pins: int = 0


@dataclass
class OutputCache:
    """LRU cache of node outputs with a per-device byte budget.

    ``budgets`` maps a device type to the bytes it may hold; a device without a
    budget is unlimited. Pinned entries are never evicted, even over budget.
    ``max_entries`` bounds the count too: scalar outputs weigh 0 bytes, and a
    long-running server would otherwise keep every one it ever computed.
    """

    budgets: dict[str, int] = field(default_factory=dict)
    max_entries: int = 100_000
    entries: OrderedDict[str, CacheEntry] = field(default_factory=OrderedDict)
    used: DeviceBytes = field(default_factory=dict)
    evictions: int = 0

    def __contains__(self, sig: str) -> bool:
        return sig in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, sig: str) -> CacheEntry | None:
        entry = self.entries.get(sig)
        if entry is not None:
            self.entries.move_to_end(sig)
        return entry

    def put(self, sig: str, outputs: tuple[Any, ...], ui: dict[str, Any] | None = None,
            *, pins: int = 0) -> CacheEntry:
        old = self.entries.pop(sig, None)
        if old is not None:
            self._account(old.nbytes, -1)
            pins += old.pins
        entry = CacheEntry(outputs, ui, value_nbytes(outputs), pins)
        self.entries[sig] = entry
        if entry.nbytes:  # scalars cannot push a device over its budget
            self._account(entry.nbytes, +1)
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
        """Drop least-recently-used unpinned entries until every device fits."""
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

    def clear(self) -> None:
        """Drop every unpinned entry."""
        for sig in [s for s, e in self.entries.items() if not e.pins]:
            self._account(self.entries.pop(sig).nbytes, -1)

    def _over_budget(self) -> set[str]:
        return {d for d, limit in self.budgets.items() if self.used.get(d, 0) > limit}

    def _account(self, nbytes: DeviceBytes, sign: int) -> None:
        for dev, n in nbytes.items():
            self.used[dev] = self.used.get(dev, 0) + sign * n
