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

- ``comfy.comfy_types`` (``IO``, ``ComfyNodeABC``, ``InputTypeDict``,
  ``CheckLazyMixin``, ``FileLocator``: ComfyUI's typing helpers for V1 nodes).

A provided module that covers part of ComfyUI's gives an ``unavailable`` placeholder
for the names ComfyUI's module defines and Steerflow lacks, and an ``AttributeError``
for any other name (:mod:`comfy_compat.shims._missing`). ComfyUI's model internals
(:data:`STUBBED`: ``comfy.sd``, ``comfy.model_patcher``, ``comfy.ldm...``, the
``comfy_extras`` node modules) import as stubs whose every name is such a placeholder,
so a pack that imports them at the top loads and only a node that uses one fails, with
a message naming it, when it runs. Any other ``comfy.*`` module and ComfyUI's other
execution internals (``comfy_execution.caching``, ...) raise
:class:`ModuleNotFoundError` naming the module and what Steerflow provides instead,
recorded as the pack's error.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from comfy_compat.shims._missing import stub_attributes

HERE = Path(__file__).resolve().parent
PROVIDED = ("folder_paths", "comfy", "comfy.utils", "comfy.model_management",
            "comfy.samplers (names)", "comfy.sample (prepare_noise)", "comfy.cli_args",
            "comfy_execution.graph_utils", "comfy_execution.graph",
            "comfy_extras.nodes_latent", "comfy_extras.nodes_clip_sdxl",
            "comfy_extras.nodes_upscale_model", "comfy.k_diffusion.utils", "node_helpers",
            "latent_preview", "server.PromptServer", "comfy_api.latest (V3 nodes)",
            "comfy.comfy_types",
            "nodes (MAX_RESOLUTION and ComfyUI's basic node classes)")
# provided from <name>.py
_MODULES = ("folder_paths", "node_helpers", "execution", "latent_preview")
# provided from the folder
_PACKAGES = ("comfy", "comfy_execution", "comfy_extras", "comfy_api")
# Top-level ComfyUI modules that are internals: refused by name rather than "not found".
INTERNAL_ROOTS = ("comfy", "comfy_extras", "comfy_execution")
# ComfyUI's model and sampler internals that packs import at the top: stub modules (and,
# for a package, every module under it). Only ComfyUI's real module names, so that a
# pack probing for a newer ComfyUI module (try: import ... except ImportError) still
# finds it missing.
STUBBED = frozenset({
    "comfy.sd", "comfy.sd1_clip", "comfy.sdxl_clip", "comfy.model_base",
    "comfy.model_detection", "comfy.model_patcher", "comfy.model_sampling",
    "comfy.ops", "comfy.lora", "comfy.lora_convert", "comfy.controlnet", "comfy.clip_vision",
    "comfy.clip_model", "comfy.diffusers_convert", "comfy.diffusers_load",
    "comfy.latent_formats", "comfy.patcher_extension", "comfy.sampler_helpers",
    "comfy.hooks", "comfy.gligen", "comfy.conds", "comfy.context_windows", "comfy.float",
    "comfy.quant_ops", "comfy.rmsnorm", "comfy.supported_models",
    "comfy.supported_models_base", "comfy.t2i_adapter", "comfy.checkpoint_pickle",
    "comfy.k_diffusion.sampling", "comfy.k_diffusion.external",
})
STUBBED_PACKAGES = ("comfy.ldm", "comfy.taesd", "comfy.text_encoders", "comfy.cldm",
                    "comfy.weight_adapter", "comfy.audio_encoders", "comfy.image_encoders",
                    "comfy_extras.chainner_models")
# comfy_extras' node modules (nodes_custom_sampler, nodes_mask, ...), less those provided
_EXTRAS_PREFIX = "comfy_extras.nodes_"


def missing_message(name: str) -> str:
    return (f"module {name!r} is not available in Steerflow: it is neither one of the "
            "ComfyUI modules Steerflow provides nor one of ComfyUI's model internals it "
            "stubs (it may be ComfyUI's executor, a module newer than Steerflow knows, or a "
            f"misspelt name). Custom node packs may use: {', '.join(PROVIDED)}; ComfyUI's "
            "model internals (comfy.sd, comfy.model_patcher, comfy.ldm.*, "
            "comfy_extras.nodes_*, ...) import as placeholders that fail when used. A pack "
            f"that needs {name!r} runs only in ComfyUI itself.")


def is_stubbed(name: str) -> bool:
    """Whether ``name`` is a ComfyUI internal module that imports as a stub."""
    return (name in STUBBED or name in STUBBED_PACKAGES
            or name.startswith(tuple(f"{p}." for p in STUBBED_PACKAGES))
            or (name.startswith(_EXTRAS_PREFIX) and "." not in name[len(_EXTRAS_PREFIX):]))


class StubLoader(importlib.abc.Loader):
    """Makes a stub module: a package (so its submodules import) whose every name is an
    ``unavailable`` placeholder (:func:`comfy_compat.shims._missing.stub_attributes`)."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        name = module.__name__
        module.__doc__ = (f"A stub for ComfyUI's {name}: its names import, and fail "
                          "with a clear message when used (see comfy_compat.shims).")
        module.__getattr__ = stub_attributes(  # type: ignore[method-assign]
            name, "ComfyUI's model internals are not Steerflow's")


_stub_loader = StubLoader()


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
        if is_stubbed(fullname):
            return importlib.machinery.ModuleSpec(fullname, _stub_loader, is_package=True)
        if fullname.partition(".")[0] in INTERNAL_ROOTS:
            raise ModuleNotFoundError(missing_message(fullname), name=fullname)
        return None


_finder = ShimFinder()


def install() -> None:
    """Make the shims importable in this process (idempotent)."""
    if _finder not in sys.meta_path:
        sys.meta_path.append(_finder)
