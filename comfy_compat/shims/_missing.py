"""Clear failures for the parts of a ComfyUI module that Steerflow does not provide.

A shim module that provides part of a ComfyUI module (``comfy.samplers``'s name lists,
say, but not its sampler objects) ends with
``__getattr__ = missing_attributes(__name__, "what it is")``: any other name raises
an :class:`AttributeError` saying which ComfyUI API is missing and why, so a pack
that imports the module loads, and a node that reaches for the missing part fails
with that message when it runs (``from module import name`` fails at import with
"cannot import name", naming it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn


def missing_message(qualname: str, what: str = "") -> str:
    return (f"ComfyUI's {qualname} is not available in Steerflow"
            f"{': ' + what if what else ''}. Steerflow provides ComfyUI's small public "
            "helpers, not its model, sampler and execution internals; a node that needs "
            f"{qualname} runs only in ComfyUI itself.")


def missing_attributes(module: str, what: str = "") -> Callable[[str], NoReturn]:
    """A module ``__getattr__`` that refuses every other name with a clear message."""

    def __getattr__(name: str) -> NoReturn:
        if name.startswith("__"):  # import machinery probes (__path__, __wrapped__, ...)
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        raise AttributeError(missing_message(f"{module}.{name}", what), name=name)

    return __getattr__

