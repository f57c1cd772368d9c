"""The output cache's mover for torch models: offload to the CPU instead of evicting.

Registered with :func:`engine.cache.register_mover` when the loaders are imported.
Over an accelerator's budget the cache hands it least-recently-used, unpinned
entries; every ``torch.nn.Module`` found in them (in handles, tuples, lists, dicts
and dataclasses, e.g. a MODEL's UNet and its ControlNet extensions) that sits on
that device is moved to the CPU in place, and moved back to where it was when the
entry is next read. Loose tensors (latents, images, embeddings) are small and
stay: the cache evicts them as before. torch is only used once it is imported.

A model bigger than an accelerator's whole budget runs with *sequential offload*:
its weights stay on the CPU and each leaf module (a Linear, a Conv2d, a norm) is
moved to the device just for its own forward, as diffusers'
``enable_sequential_cpu_offload`` does. It uses diffusers' leaf-level group
offloading hooks (``diffusers.hooks.apply_group_offloading``) rather than
accelerate's ``cpu_offload``: those keep the weights as real CPU tensors (accelerate
parks them on the meta device), so the LoRA patches written into the weights for a
run still apply, and a diffusers model's ``.device`` still names the device it
computes on. :func:`is_sequentially_offloaded` tells whether a module runs that way.

A model bigger than the budget must not reach the device whole even once, so the
loaders place it through :func:`place_model`: it stays on the CPU, starts on
sequential offload there, and the cache adopts it (:meth:`TorchMover.adopt_sequential`)
as one of its own sequential entries, made whole when the budget allows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from engine.cache import register_mover
from engine.nbytes import members

Home = list[tuple[Any, str]]  # (module, the device it came from)
M = TypeVar("M")

# Models a loader put straight on sequential offload, with the device they compute on:
# the cache adopts each once (adopt_sequential), then they are its sequential entries.
_PLACED: WeakKeyDictionary[Any, str] = WeakKeyDictionary()


@dataclass(frozen=True)
class SequentialHome:
    """The home token of models put on sequential offload: (module, its device)."""

    modules: tuple[tuple[Any, str], ...]


def modules_on(value: Any, device_type: str) -> list[Any]:
    """The distinct ``nn.Module`` objects in ``value`` whose first parameter or buffer
    is on ``device_type`` (submodules move with their parent: not listed apart)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    module_t = torch.nn.Module
    found: list[Any] = []
    seen: set[int] = set()
    stack = [value]
    while stack:
        obj = stack.pop()
        if obj is None or isinstance(obj, int | float | str | bytes) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, module_t):
            if _device_of(obj) is not None and _device_of(obj).type == device_type:
                found.append(obj)
        elif isinstance(obj, torch.Tensor):
            continue
        else:
            stack.extend(members(obj))
    return found


def module_nbytes(module: Any) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size()
               for tensors in (module.parameters(), module.buffers()) for t in tensors)


def estimated_nbytes(module: Any, dtype: Any = None) -> int:
    """Bytes ``module`` will take once its floating weights are cast to ``dtype``
    (read off the loaded state dict, before anything moves)."""
    return sum(t.numel() * (dtype.itemsize if dtype is not None and t.is_floating_point()
                            else t.element_size())
               for tensors in (module.parameters(), module.buffers()) for t in tensors)


def device_budget(ctx: Any, device: Any = None) -> int | None:
    """The bytes a model may take whole on ``device`` (default ``ctx.device``): the budget
    the running executor's output cache keeps for its type (``--cache-budget``), capped by
    the device's memory; None on the CPU (weights live there anyway) or when unbounded."""
    import torch

    from engine.session import device_memory

    kind = torch.device(device if device is not None else ctx.device).type
    if kind == "cpu":
        return None
    cache = getattr(getattr(getattr(ctx, "run", None), "ex", None), "cache", None)
    limits = [n for n in (getattr(cache, "budgets", {}).get(kind), device_memory(kind))
              if n is not None]
    return min(limits) if limits else None


def place_model(model: M, device: Any, dtype: Any = None, *, budget: int | None = None) -> M:
    """Put a freshly loaded model (weights on the CPU) on ``device`` in ``dtype``, in eval mode.

    A model bigger than ``budget`` bytes in ``dtype`` never goes to the device whole (it
    could not fit, or would evict everything): cast on the CPU, it runs with sequential
    offload onto ``device`` and is recorded for the output cache to adopt.
    """
    from nodes.diffusion.loading import _own_aligned_memory

    big = budget is not None and estimated_nbytes(model, dtype) > budget
    if not big:
        model.to(device)  # before the cast: on a GPU the cast is faster there
    # Only cast when needed: diffusers warns on every .to(dtype=...).
    if dtype is not None and any(p.dtype != dtype for p in model.parameters()):
        model.to(dtype)
    _own_aligned_memory(model)
    if big:
        start_sequential_offload(model, device, MOVER.target)
        _PLACED[model] = str(device)
    return model.eval()


def compute_device(module: Any) -> Any:
    """The device ``module`` computes on: the device of its weights, or where the hooks of
    :func:`start_sequential_offload` move each layer (its weights then sit on the CPU);
    None for a module without weights."""
    if sys.modules.get("diffusers.hooks.group_offloading") is not None:  # else no hooks yet
        from diffusers.hooks.group_offloading import _get_group_onload_device

        try:
            device = _get_group_onload_device(module)
        except ValueError:  # not offloaded
            pass
        else:
            if device.type != "cpu" and device.index is None:
                # as a tensor there reports it ("cuda" -> "cuda:0"): compare like with like
                import torch

                device = torch.empty(0, device=device).device
            return device
    return _device_of(module)


def is_sequentially_offloaded(module: Any) -> bool:
    """Whether ``module`` runs with sequential (leaf-level) offload hooks."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    return bool(_is_group_offload_enabled(module))


def start_sequential_offload(module: Any, device: Any, storage: str = "cpu") -> None:
    """Keep ``module``'s weights on ``storage`` and move each leaf to ``device`` only
    for its own forward (inputs are moved there too)."""
    import torch
    from diffusers.hooks import apply_group_offloading

    if any(t.device != torch.device(storage) for tensors in (module.parameters(),
           module.buffers()) for t in tensors):
        module.to(storage)
    apply_group_offloading(module, onload_device=torch.device(device),
                           offload_device=torch.device(storage), offload_type="leaf_level")


def end_sequential_offload(module: Any, device: Any) -> None:
    """Remove the hooks of :func:`start_sequential_offload`; the weights go to ``device``."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.group_offloading import (
        _GROUP_OFFLOADING,
        _LAYER_EXECUTION_TRACKER,
        _LAZY_PREFETCH_GROUP_OFFLOADING,
    )

    registry = HookRegistry.check_if_exists_or_initialize(module)
    for name in (_GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _LAZY_PREFETCH_GROUP_OFFLOADING):
        registry.remove_hook(name, recurse=True)
    _PLACED.pop(module, None)
    module.to(device)


def _device_of(module: Any) -> Any:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


class TorchMover:
    """Moves the models in a cached value to ``target`` (the CPU) and back."""

    def __init__(self, target: str = "cpu"):
        self.target = target

    def offload(self, value: Any, device_type: str) -> tuple[Any, Home] | None:
        if device_type == self.target:
            return None
        modules = modules_on(value, device_type)
        if not modules:
            return None
        home: Home = []
        for module in modules:
            home.append((module, str(_device_of(module))))
            module.to(self.target)
        return value, home

    def restore(self, value: Any, home: Home | SequentialHome) -> Any:
        if isinstance(home, SequentialHome):
            for module, device in home.modules:
                end_sequential_offload(module, device)
            return value
        for module, device in home:
            module.to(device)
        return value

    def offload_sequential(self, value: Any, device_type: str, budget: int
                           ) -> tuple[Any, SequentialHome] | None:
        """Put every model in ``value`` on ``device_type`` bigger than ``budget`` bytes on
        sequential offload, its weights kept on ``target``."""
        big = [m for m in modules_on(value, device_type) if module_nbytes(m) > budget]
        if not big:
            return None
        home = []
        for module in big:
            device = str(_device_of(module))
            start_sequential_offload(module, device, self.target)
            home.append((module, device))
        return value, SequentialHome(tuple(home))

    def adopt_sequential(self, value: Any, device_type: str
                         ) -> tuple[SequentialHome, int] | None:
        """The models in ``value`` that :func:`place_model` put on sequential offload onto
        ``device_type`` (each adopted once), and the bytes they would take there whole."""
        if not _PLACED:
            return None
        import torch

        placed = [(m, _PLACED[m]) for m in modules_on(value, self.target)
                  if m in _PLACED and torch.device(_PLACED[m]).type == device_type]
        if not placed:
            return None
        for module, _ in placed:
            del _PLACED[module]
        return SequentialHome(tuple(placed)), sum(module_nbytes(m) for m, _ in placed)


MOVER = TorchMover()
register_mover(MOVER)
