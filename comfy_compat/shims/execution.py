"""ComfyUI's ``execution`` module (its prompt executor), as a name only.

Some packs write ``import execution`` at the top and use it only in optional code
(a patch of ComfyUI's executor, say). The module imports, so those packs load;
ComfyUI's executor is not Steerflow's (:mod:`engine.run`), and naming anything in it
(``execution.PromptExecutor``, ...) raises an ``AttributeError`` that says so.
"""

from __future__ import annotations

from comfy_compat.shims._missing import missing_attributes

__getattr__ = missing_attributes(
    __name__, "ComfyUI's prompt executor is not Steerflow's (engine.run)")
