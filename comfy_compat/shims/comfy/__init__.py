"""ComfyUI's ``comfy`` package as Steerflow provides it to custom node packs.

Only :mod:`comfy.utils` and :mod:`comfy.model_management` exist; importing any
other ``comfy.*`` module raises ``ModuleNotFoundError`` naming it
(see :mod:`comfy_compat.shims`).
"""
