"""ComfyUI's ``comfy.comfy_types``: the node typing helpers of :mod:`.node_typing`, the
value types of ``comfy_api.input`` (``ImageInput``, ``VideoInput``, ...; the video
ones are placeholders, see docs/custom_nodes.md), and the UNet wrapper type hints
(``UnetWrapperFunction``, ``UnetParams``, ...), which are only names for type checkers:
Steerflow never calls a pack's UNet wrapper."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypedDict

from comfy.comfy_types.node_typing import IO, CheckLazyMixin, ComfyNodeABC, FileLocator
from comfy.comfy_types.node_typing import InputTypeDict as InputTypeDict
from comfy_api.input import AudioInput, ImageInput, VideoInput
from comfy_api.input_impl import VideoFromComponents, VideoFromFile


class UnetApplyFunction(Protocol):
    def __call__(self, x: Any, t: Any, **kwargs: Any) -> Any: ...


class UnetApplyConds(TypedDict):
    c_concat: Any
    c_crossattn: Any
    control: Any
    transformer_options: dict[str, Any] | None


class UnetParams(TypedDict):
    input: Any
    timestep: Any
    c: UnetApplyConds
    cond_or_uncond: list[int]


UnetWrapperFunction = Callable[[UnetApplyFunction, UnetParams], Any]

__all__ = ["IO", "AudioInput", "CheckLazyMixin", "ComfyNodeABC", "FileLocator",
           "ImageInput", "InputTypeDict", "UnetApplyConds", "UnetApplyFunction",
           "UnetParams", "UnetWrapperFunction", "VideoFromComponents", "VideoFromFile",
           "VideoInput"]
