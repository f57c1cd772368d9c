"""ComfyUI custom node packs on Steerflow.

A pack written for ComfyUI (a module with ``NODE_CLASS_MAPPINGS``) loads from
``custom_nodes/`` when it needs only torch, numpy, PIL and ComfyUI's small public
helpers. This package composes the engine and the built-in nodes, so it lives
above both; the engine knows it only as the ``steerflow.pack_adapters`` entry point
(:data:`ADAPTER`, see :mod:`engine.registry`).

- :mod:`comfy_compat.adapter` turns each ComfyUI class into a :class:`engine.Node`
  subclass (INPUT_TYPES, RETURN_TYPES, FUNCTION, IS_CHANGED, VALIDATE_INPUTS,
  INPUT_IS_LIST / OUTPUT_IS_LIST, hidden inputs, ``{"ui": ..., "result": ...}``).
- :mod:`comfy_compat.shims` provides the modules packs import: ``folder_paths``,
  ``comfy.utils``, ``comfy.model_management``, ``comfy.samplers`` (names),
  ``comfy.sample`` (``prepare_noise``), ``comfy.cli_args``, ``node_helpers``,
  ``latent_preview``, ...; any other ``comfy.*`` module (``comfy.sd``,
  ``comfy.model_patcher``, ...) fails to import with a message naming it.
- :mod:`comfy_compat.builtin_nodes` is ComfyUI's node classes (``SaveImage``,
  ``LoraLoader``, ``CLIPTextEncode``, ...) as packs call or subclass them, run by
  Steerflow's built-in nodes of the same names.
- :mod:`comfy_compat.prompt_server` is ComfyUI's ``server.PromptServer``, reached
  as ``server.PromptServer`` through our own ``server`` package (see there); packs'
  routes are answered in the worker by :mod:`comfy_compat.http_bridge`.
- :mod:`comfy_compat.nodes_module` is ComfyUI's ``nodes`` module as packs use it
  (``MAX_RESOLUTION``, ``NODE_CLASS_MAPPINGS``), reached through our ``nodes`` package.
"""

from comfy_compat.adapter import ADAPTER, ComfyPackAdapter

__all__ = ["ADAPTER", "ComfyPackAdapter"]
