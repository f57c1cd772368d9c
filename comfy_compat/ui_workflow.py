"""The ``EXTRA_PNGINFO`` a ComfyUI pack sees: ComfyUI's UI workflow, not our document.

ComfyUI's front end sends its UI graph as ``extra_pnginfo["workflow"]``, and packs
read it: Show Text (pysssss) writes its text into ``workflow["nodes"][i]
["widgets_values"]``, MathExpression finds a node by type or title and reads its
widget, rgthree's Seed and Power Puter look nodes up by id. Steerflow's canvas, CLI and
``Session`` put our own document there (:mod:`engine.workflow`), which has no
``nodes`` list. :func:`comfy_pnginfo` hands a pack a copy of the ``extra_pnginfo``
whose ``workflow`` is a ComfyUI-shaped view of that document
(:func:`engine.comfy_export.ui_view`).

A ComfyUI UI workflow (or anything else) passes through unchanged; what Steerflow
writes into PNGs is not affected (its writer reads the run's own ``extra_pnginfo``).
One view is built per ``extra_pnginfo`` object and shared by the run's pack nodes, so
what one node writes into it (Show Text's text) the next sees, as in ComfyUI.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from engine.comfy_export import ui_view
from engine.workflow import is_document

_lock = threading.Lock()
_last: tuple[Any, dict[str, Any]] | None = None  # (extra_pnginfo, its view)


def comfy_pnginfo(pnginfo: Any, schemas: Mapping[str, Any] | None) -> Any:
    """``pnginfo`` as a ComfyUI pack expects it (see the module); the same object when
    its workflow is not a Steerflow document."""
    global _last
    if not isinstance(pnginfo, dict) or not is_document(pnginfo.get("workflow")):
        return pnginfo
    with _lock:
        last = _last
        if last is not None and last[0] is pnginfo:
            return last[1]
        view = {**pnginfo, "workflow": ui_view(pnginfo["workflow"], schemas or {})}
        _last = (pnginfo, view)  # holds pnginfo, so its id is not reused meanwhile
        return view
