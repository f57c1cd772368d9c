"""Modules attached to the UNet for one sampling run, restored after.

A technique that needs extra layers *inside* the UNet for a run (GLIGEN's gated
self-attention ``fuser`` in every ``BasicTransformerBlock`` and its ``position_net``)
never sets them on the cached model by hand. Its extension calls :func:`attach` (in
``setup``) with :class:`ModulePatch` entries; the sampler's :func:`run_scoped` (a
decorator on ``sample``, like LoRA's ``lora_patched``) puts back what each attribute
held before when the run ends, also on error, interrupt, or a failure in a later
extension's ``setup``. Runs are serialised by the executor, so patching a shared
cached UNet for a run is safe (as LoRA's weight patches are).

Modules attached in ``setup`` are in place before the sampler installs the attention
store's hooks, so their attention layers are listed (and restored) with the rest.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

F = TypeVar("F", bound=Callable[..., Any])

#: (owner, attribute, (where it was: "module" | "attr" | "missing", its value)) of the
#: current run's patches, oldest first
_Saved = list[tuple[Any, str, tuple[str, Any]]]
_SCOPE: ContextVar[_Saved | None] = ContextVar("steerflow_module_scope", default=None)


@dataclass(frozen=True, eq=False)
class ModulePatch:
    """Set ``<path>.<name>`` of the UNet to ``module`` for the run (``path`` "" is the
    UNet itself); whatever the attribute held before (or its absence) comes back after."""

    path: str
    name: str
    module: torch.nn.Module


def attach(root: torch.nn.Module, patches: Sequence[ModulePatch]) -> None:
    """Attach ``patches`` to ``root`` until the current sampling run ends.

    Only valid inside a :func:`run_scoped` call (the sampler's ``sample``); two patches
    of one attribute in a run are an error (two techniques would fight over it)."""
    saved = _SCOPE.get()
    if saved is None:
        raise RuntimeError("module patches can only be attached during a sampling run")
    taken = {(id(owner), name) for owner, name, _ in saved}
    import torch

    for patch in patches:
        if not isinstance(patch.module, torch.nn.Module):  # only modules are restored
            raise TypeError(f"{_label(patch)}: a module patch attaches a torch module, not "
                            f"a {type(patch.module).__name__}")
        owner = root.get_submodule(patch.path) if patch.path else root
        if (id(owner), patch.name) in taken:
            raise ValueError(f"two techniques attach {_label(patch)} in one run")
        if patch.name in owner._parameters or patch.name in owner._buffers:
            raise ValueError(f"{_label(patch)} is a weight, not a place for a module")
        before = (("module", owner._modules[patch.name]) if patch.name in owner._modules
                  else ("attr", owner.__dict__[patch.name]) if patch.name in owner.__dict__
                  else ("missing", None))
        saved.append((owner, patch.name, before))
        taken.add((id(owner), patch.name))
        setattr(owner, patch.name, patch.module)


def _label(patch: ModulePatch) -> str:
    return f"{patch.path}.{patch.name}" if patch.path else patch.name


def _restore(saved: _Saved) -> None:
    for owner, name, (kind, value) in reversed(saved):
        if kind == "module":  # in place: the module keeps its position among its siblings
            owner._modules[name] = value
            continue
        owner._modules.pop(name, None)
        if kind == "attr":
            owner.__dict__[name] = value
    saved.clear()


@contextmanager
def scope() -> Iterator[None]:
    """A run's scope: everything :func:`attach` puts on a UNet inside it is restored at
    its end (nested scopes restore their own patches)."""
    saved: _Saved = []
    token = _SCOPE.set(saved)
    try:
        yield
    finally:
        _SCOPE.reset(token)
        _restore(saved)


def run_scoped(fn: F) -> F:
    """Decorate the sampler's ``sample``: modules attached during the call are removed
    when it returns or raises."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with scope():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
