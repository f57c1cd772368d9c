"""The modules ComfyUI packs import, and a finder that provides them.

:func:`install` appends :class:`ShimFinder` to ``sys.meta_path``, after the normal
finders, so a real ComfyUI on the path would still win. It provides, from this folder:

- ``folder_paths``, ``node_helpers``, ``latent_preview`` (progress callback, previewer
  base) and ``execution`` (a name only);
- the ``comfy`` package: ``comfy.utils``, ``comfy.model_management``,
  ``comfy.samplers`` (sampler and scheduler names), ``comfy.sample``
  (``prepare_noise``), ``comfy.cli_args`` (``args``, ``LatentPreviewMethod``),
  ``comfy.k_diffusion.utils`` (``FolderOfImages``);
- ``comfy_execution.graph_utils`` / ``comfy_execution.graph`` (GraphBuilder, is_link,
  ExecutionBlocker, DynamicPrompt, over the engine's expansion and list API);
- ``comfy_extras.nodes_latent`` / ``nodes_clip_sdxl`` / ``nodes_upscale_model``
  (see :mod:`comfy_compat.builtin_nodes`);
- ``comfy_api.latest`` (and ``comfy_api.v0_0_1`` ...): ComfyUI's V3 node API, whose
  classes present the V1 class surface to the adapter (see the package's docstring).

A provided module that covers part of ComfyUI's raises an ``AttributeError`` naming
any other name (:mod:`comfy_compat.shims._missing`). Any other ``comfy.*`` module and
ComfyUI's other internals (``comfy_extras``, ``comfy_execution``) raise
:class:`ModuleNotFoundError` naming the module and what Steerflow provides instead, so
a pack that reaches into model internals fails to load with that message, recorded as
the pack's error.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
PROVIDED = ("folder_paths", "comfy", "comfy.utils", "comfy.model_management",
            "comfy.samplers (names)", "comfy.sample (prepare_noise)", "comfy.cli_args",
            "comfy_execution.graph_utils", "comfy_execution.graph",
            "comfy_extras.nodes_latent", "comfy_extras.nodes_clip_sdxl",
            "comfy_extras.nodes_upscale_model", "comfy.k_diffusion.utils", "node_helpers",
            "latent_preview", "server.PromptServer", "comfy_api.latest (V3 nodes)",
            "nodes (MAX_RESOLUTION and ComfyUI's basic node classes)")
# provided from <name>.py
_MODULES = ("folder_paths", "node_helpers", "execution", "latent_preview")
# provided from the folder
_PACKAGES = ("comfy", "comfy_execution", "comfy_extras", "comfy_api")
# Top-level ComfyUI modules that are internals: refused by name rather than "not found".
INTERNAL_ROOTS = ("comfy", "comfy_extras", "comfy_execution")


def missing_message(name: str) -> str:
    return (f"ComfyUI module {name!r} is not available in Steerflow: it is part of "
            "ComfyUI's internals (models, samplers, execution), which Steerflow does not "
            f"provide. Custom node packs may use: {', '.join(PROVIDED)}; a pack that needs "
            f"{name!r} runs only in ComfyUI itself.")


class ShimFinder(importlib.abc.MetaPathFinder):
    """Provides the shim modules; refuses ComfyUI's internals with a clear message."""

    def find_spec(self, fullname: str, path: object = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in _MODULES:
            return importlib.util.spec_from_file_location(fullname, HERE / f"{fullname}.py")
        if fullname in _PACKAGES:
            return importlib.util.spec_from_file_location(
                fullname, HERE / fullname / "__init__.py",
                submodule_search_locations=[str(HERE / fullname)])
        # Reached only when no other finder found it (we come last): comfy.utils and
        # the like were found by the path finder in the package's __path__.
        if fullname.partition(".")[0] in INTERNAL_ROOTS:
            raise ModuleNotFoundError(missing_message(fullname), name=fullname)
        return None


_finder = ShimFinder()


def install() -> None:
    """Make the shims importable in this process (idempotent)."""
    if _finder not in sys.meta_path:
        sys.meta_path.append(_finder)
