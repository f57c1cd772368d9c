"""The output cache's mover for torch models: offload to the CPU instead of evicting.

Registered with :func:`engine.cache.register_mover` when the loaders are imported.
Over an accelerator's budget the cache hands it least-recently-used, unpinned
entries; every ``torch.nn.Module`` found in them (in handles, tuples, lists, dicts
and dataclasses, e.g. a MODEL's UNet and its ControlNet extensions) that sits on
that device is moved to the CPU in place, and moved back to where it was when the
entry is next read. Loose tensors (latents, images, embeddings) are small and
stay: the cache evicts them as before. torch is only used once it is imported.
"""

from __future__ import annotations

import sys
from typing import Any

from engine.cache import register_mover

Home = list[tuple[Any, str]]  # (module, the device it came from)


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
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
            stack.extend(getattr(obj, f) for f in obj.__dataclass_fields__)
    return found


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

    def restore(self, value: Any, home: Home) -> Any:
        for module, device in home:
            module.to(device)
        return value


MOVER = TorchMover()
register_mover(MOVER)
