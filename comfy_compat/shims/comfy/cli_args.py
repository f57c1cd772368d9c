"""ComfyUI's ``comfy.cli_args``: ``args`` (ComfyUI's command-line options) and
``LatentPreviewMethod``, as packs read them.

``args`` holds ComfyUI's defaults for the options packs consult (``disable_metadata``,
``preview_method``, ``output_directory``, VRAM modes, ...), describing Steerflow's
own behaviour where it has one: metadata is embedded in saved PNGs, previews are
latent previews. Another option name reads as ``None`` (as an unset option does in
ComfyUI) and ``args.get(name, default)`` works on it.
"""

from __future__ import annotations

import enum
from typing import Any


class LatentPreviewMethod(enum.StrEnum):
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


class _Args:
    """ComfyUI's parsed options; unknown names are ``None``."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return None

    def get(self, name: str, default: Any = None) -> Any:
        return self.__dict__.get(name, default)

    def __repr__(self) -> str:
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


args = _Args(
    listen="127.0.0.1", port=8188, base_directory=None, output_directory=None,
    temp_directory=None, input_directory=None, user_directory=None,
    extra_model_paths_config=None, disable_metadata=False,
    preview_method=LatentPreviewMethod.Auto, preview_size=512,
    cpu=False, gpu_only=False, highvram=False, normalvram=False, lowvram=False,
    novram=False, cpu_vae=False, force_fp16=False, force_fp32=False, fp16_vae=False,
    bf16_vae=False, fp32_vae=False, disable_xformers=True, use_pytorch_cross_attention=True,
    use_split_cross_attention=False, use_quad_cross_attention=False, deterministic=False,
    dont_print_server=False, quick_test_for_ci=False, windows_standalone_build=False,
    disable_smart_memory=False, verbose="INFO", cache_lru=0, cache_classic=True,
    reserve_vram=None, fast=set(), multi_user=False, enable_cors_header=None,
    disable_all_custom_nodes=False, front_end_version="comfyanonymous/ComfyUI@latest",
)
