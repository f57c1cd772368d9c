"""ComfyUI's ``latent_preview``, as packs use it around their own sampling loops.

- :func:`prepare_callback` gives the ``callback(step, x0, x, total_steps)`` a sampling
  loop calls: it advances the running node's progress (Steerflow's ``progress``
  event, which also honours an interrupt). Steerflow draws its own latent previews
  for its samplers; this callback sends none.
- :class:`LatentPreviewer` is the base class packs subclass, and
  :func:`get_previewer` answers ``None`` ("no previewer"), as ComfyUI does with
  previews off: Steerflow's samplers do not call it, so a pack that wraps it (to
  draw animated previews, say) loads and its wrapper is simply not used.

ComfyUI's previewer implementations (``TAESDPreviewerImpl``, ``Latent2RGBPreviewer``,
``TAESD``) decode with ComfyUI's models and are not provided: naming one raises an
``AttributeError`` that says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from comfy_compat.shims._missing import missing_attributes

MAX_PREVIEW_RESOLUTION = 512


class LatentPreviewer:
    def decode_latent_to_preview(self, x0: Any) -> Any:
        raise NotImplementedError

    def decode_latent_to_preview_image(self, preview_format: str, x0: Any) -> Any:
        image = self.decode_latent_to_preview(x0)
        return (preview_format, image, MAX_PREVIEW_RESOLUTION)


def get_previewer(device: Any = None, latent_format: Any = None) -> LatentPreviewer | None:
    return None


def prepare_callback(model: Any = None, steps: int = 0, x0_output_dict: dict[str, Any] | None
                     = None) -> Callable[[int, Any, Any, int], None]:
    """A sampling-step callback that advances the running node's progress bar."""
    from comfy.utils import ProgressBar  # the packs' copy (this module is one of the shims)

    bar = ProgressBar(steps)

    def callback(step: int, x0: Any, x: Any, total_steps: int) -> None:
        if x0_output_dict is not None:
            x0_output_dict["x0"] = x0
        bar.update_absolute(step + 1, total_steps)

    return callback


# Impact Pack imports ComfyUI's previewers at its top
COMFY_NAMES = ("TAESD", "TAESDPreviewerImpl", "Latent2RGBPreviewer", "preview_to_image")
__getattr__ = missing_attributes(
    __name__, "ComfyUI's previewers decode with ComfyUI's models", COMFY_NAMES)
