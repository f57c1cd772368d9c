"""Which keyword arguments a pack's function takes (ComfyUI passes only those)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def parameters(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    """Names ``fn`` accepts by keyword, and whether it takes ``**kwargs`` (True also when
    its signature cannot be read: everything is passed)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    names = {p.name for p in params
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def accepted(fn: Callable[..., Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``inputs`` that ``fn`` takes by keyword."""
    names, var_kw = parameters(fn)
    return dict(inputs) if var_kw else {k: v for k, v in inputs.items() if k in names}
