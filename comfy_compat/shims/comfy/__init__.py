"""ComfyUI's ``comfy`` package as Steerflow provides it to custom node packs.

:mod:`comfy.utils`, :mod:`comfy.model_management`, :mod:`comfy.samplers` (names),
:mod:`comfy.sample` (``prepare_noise``), :mod:`comfy.cli_args`,
:mod:`comfy.k_diffusion.utils` and :mod:`comfy.comfy_types` exist; ComfyUI's model
internals (``comfy.sd``, ``comfy.model_patcher``, ``comfy.ldm...``) import as stubs
whose names fail when used; any other ``comfy.*`` module raises
``ModuleNotFoundError`` naming it (see :mod:`comfy_compat.shims`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

_HERE = Path(__file__).parent


def __getattr__(name: str) -> ModuleType:
    # In ComfyUI every comfy.* module is imported by the time packs load, so packs write
    # `import comfy` and then name `comfy.sd.VAE`; import ours (or the stub) on first use.
    from comfy_compat.shims import is_stubbed

    provided = (_HERE / f"{name}.py").is_file() or (_HERE / name / "__init__.py").is_file()
    if not name.startswith("_") and (provided or is_stubbed(f"comfy.{name}")):
        return importlib.import_module(f"comfy.{name}")
    raise AttributeError(f"module 'comfy' has no attribute {name!r}")
