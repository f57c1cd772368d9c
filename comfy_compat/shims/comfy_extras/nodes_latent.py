"""ComfyUI's ``comfy_extras.nodes_latent``: ``LatentBatch`` (see
:mod:`comfy_compat.builtin_nodes`)."""

from comfy_compat.builtin_nodes import LatentBatch
from comfy_compat.shims._missing import missing_attributes

__all__ = ["LatentBatch"]
__getattr__ = missing_attributes(__name__)
