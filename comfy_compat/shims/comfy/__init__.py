"""ComfyUI's ``comfy`` package as Steerflow provides it to custom node packs.

:mod:`comfy.utils`, :mod:`comfy.model_management`, :mod:`comfy.samplers` (names),
:mod:`comfy.sample` (``prepare_noise``), :mod:`comfy.cli_args` and
:mod:`comfy.k_diffusion.utils` exist; importing any other ``comfy.*`` module
(``comfy.sd``, ``comfy.model_patcher``, ...) raises ``ModuleNotFoundError`` naming
it (see :mod:`comfy_compat.shims`).
"""
