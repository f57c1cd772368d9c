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

Values are weighed by :mod:`engine.nbytes`, movers are declared and registered in
:mod:`engine.movers`, and budget strings are parsed by :mod:`engine.budget`; their public
names stay importable from here.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

# Re-exported: engine.cache was the home of all of these, and callers import them here.
from engine.budget import (  # noqa: F401
    BUDGET_DEVICES,
    BUDGET_EXAMPLES,
    MAX_BUDGET,
    Amount,
    MemoryOf,
    check_budget,
    parse_budget,
)
from engine.movers import (  # noqa: F401
    _MOVERS,
    Mover,
    SequentialMover,
    register_mover,
    unregister_mover,
)
from engine.nbytes import DeviceBytes, value_nbytes
from engine.signature import signature  # noqa: F401


@dataclass
class CacheEntry:
    """One node's cached outputs, their UI payload, and where their bytes are."""

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

    def peek(self, sig: str) -> CacheEntry | None:
        """The entry as it is: not moved in the LRU order, nor back to its device."""
        return self.entries.get(sig)

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

    def _offload(self, device: str, everything: bool = False) -> None:
        movers = _MOVERS if self.movers is None else self.movers
        if not movers:
            return
        for entry in list(self.entries.values()):
            if not everything and self.used.get(device, 0) <= self.budgets[device]:
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

    def offload_all(self) -> None:
        """Move every unpinned entry a mover can off its accelerators to the CPU, keeping
        it cached (moved back when next read): ComfyUI's "unload models"."""
        for device in sorted({d for e in self.entries.values() for d in e.nbytes} - {"cpu"}):
            self._offload(device, everything=True)

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
