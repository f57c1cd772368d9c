"""ComfyUI's API object: ``ComfyAPI().execution.set_progress(...)`` (async) and its
blocking twin ``ComfyAPISync``.

Progress goes where ``comfy.utils.ProgressBar``'s goes: the running node's context
(:mod:`comfy_compat.runtime`), as a ``progress`` event, with its preview image and its
interrupt check. ComfyUI's values are floats (``value`` of ``max_value``, often a
fraction of 1.0); Steerflow's events carry whole numbers, so a report of a total of
1.0 (or any total that is not a whole number) is sent in thousandths.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from comfy_compat import runtime

log = logging.getLogger(__name__)

#: the steps a fractional progress report is given in
FRACTION_STEPS = 1000


def set_progress(value: float, max_value: float, node_id: str | None = None,
                 preview_image: Any = None, ignore_size_limit: bool = False) -> None:
    """Report ``value`` of ``max_value`` for the running node (or ``node_id``).
    ``ignore_size_limit`` is accepted; previews keep Steerflow's size limit."""
    ctx = runtime.current_context()
    if ctx is None:
        if node_id is None:
            raise ValueError("set_progress was called outside a node's run: pass "
                             "node_id=..., or call it from the node's FUNCTION")
        log.debug("set_progress(node_id=%r) outside a node's run; dropped", node_id)
        return
    steps = _steps(value, max_value)
    if steps is None:
        log.debug("set_progress(%r, %r): not a progress value; dropped", value, max_value)
        return
    if node_id is not None and str(node_id) != ctx.node_id:
        ctx = dataclasses.replace(ctx, node_id=str(node_id))
    ctx.progress(*steps, preview=_preview(preview_image))


def _steps(value: Any, max_value: Any) -> tuple[int, int] | None:
    """``(value, total)`` in whole steps: of a whole total above 1 as given (the value
    cut to a whole step, as ProgressBar's), of any other total in thousandths; None for
    a total that is not a positive finite number."""
    try:
        value, max_value = float(value), float(max_value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(max_value) or max_value <= 0 or math.isnan(value):
        return None
    value = min(max(value, 0.0), max_value)
    if max_value.is_integer() and max_value > 1:
        return int(value), int(max_value)
    return int(value / max_value * FRACTION_STEPS), FRACTION_STEPS


def _preview(image: Any) -> Any:
    """A PIL image for the preview path (an IMAGE tensor: its first image)."""
    import torch

    if not isinstance(image, torch.Tensor):
        return image  # a PIL image, or None
    from PIL import Image

    pixels = image[0] if image.dim() == 4 else image
    array = (pixels.detach().float().clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


class _Execution:
    async def set_progress(self, value: float, max_value: float, node_id: str | None = None,
                           preview_image: Any = None, ignore_size_limit: bool = False
                           ) -> None:
        """Update the node's progress bar (and preview)."""
        set_progress(value, max_value, node_id, preview_image, ignore_size_limit)


class _ExecutionSync:
    def set_progress(self, value: float, max_value: float, node_id: str | None = None,
                     preview_image: Any = None, ignore_size_limit: bool = False) -> None:
        """Update the node's progress bar (and preview)."""
        set_progress(value, max_value, node_id, preview_image, ignore_size_limit)


class ComfyAPI_latest:
    """``api.execution.set_progress(...)``, awaited."""

    VERSION = "latest"
    STABLE = False

    def __init__(self) -> None:
        self.execution = _Execution()


def sync_class(api: type[ComfyAPI_latest]) -> type:
    """The blocking twin of an API class (ComfyUI's ``create_sync_class``)."""

    def __init__(self: Any) -> None:
        self.execution = _ExecutionSync()

    return type(f"{api.__name__}Sync", (), {
        "__doc__": "``api.execution.set_progress(...)``, called without await.",
        "__module__": api.__module__, "VERSION": api.VERSION, "STABLE": api.STABLE,
        "__init__": __init__})


def versioned(version: str, *, stable: bool) -> tuple[type[ComfyAPI_latest], type]:
    """A versioned alias's ``ComfyAPI`` (ComfyUI's ``ComfyAPIAdapter_v0_0_2`` ...) and its
    sync twin."""
    adapter = type(f"ComfyAPIAdapter_v{version.replace('.', '_')}", (ComfyAPI_latest,),
                   {"VERSION": version, "STABLE": stable})
    return adapter, sync_class(adapter)


ComfyAPI = ComfyAPI_latest
ComfyAPISync = sync_class(ComfyAPI_latest)
