"""ComfyUI's ``execution`` module (its prompt executor), as a name only.

Some packs write ``import execution`` at the top and use it only in optional code
(a patch of ComfyUI's executor, say). The module imports, so those packs load;
ComfyUI's executor is not Steerflow's (:mod:`engine.run`), and naming anything in it
(``execution.PromptExecutor``, ...) raises an ``AttributeError`` that says so.
"""

from __future__ import annotations

from comfy_compat.shims._missing import missing_attributes

# what packs patch or call (Impact Pack wraps PromptExecutor.execute)
COMFY_NAMES = ("PromptExecutor", "PromptQueue", "validate_prompt", "validate_inputs",
               "validate_node_input", "get_input_data", "get_output_data", "execute",
               "ExecutionResult", "IsChangedCache", "CacheSet", "CacheType", "format_value",
               "full_type_name")
__getattr__ = missing_attributes(
    __name__, "ComfyUI's prompt executor is not Steerflow's (engine.run)", COMFY_NAMES)
