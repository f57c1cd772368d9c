"""Movers: how the output cache offloads values from an accelerator to the CPU.

The node packs register one for torch models (the engine knows neither torch nor
diffusers); every :class:`~engine.cache.OutputCache` tries them in registration order.
"""

from __future__ import annotations

from typing import Any, Protocol


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
    """Stop offloading through ``mover``."""
    if mover in _MOVERS:
        _MOVERS.remove(mover)
