"""ComfyUI's ``comfy_api`` package as Steerflow provides it to custom node packs: the V3
node API (``comfy_api.latest``: ``io``, ``ui``, ``ComfyExtension``) and its versioned
aliases (``comfy_api.v0_0_1`` ...). A V3 ``io.ComfyNode`` class presents ComfyUI's V1
class surface (``INPUT_TYPES``, ``RETURN_TYPES``, ``FUNCTION``, ...), so the ComfyUI
pack adapter (:mod:`comfy_compat.adapter`) runs it like any V1 class.

Packs import it as ``comfy_api`` (the shim finder); Steerflow's own code must too, never
as ``comfy_compat.shims.comfy_api``, or the classes would exist twice. (The loader,
``_loader``, compares nothing by identity, so it is the one exception.)
"""
