"""``comfy_api.latest``: ComfyUI's V3 node API for custom node packs.

``io`` (types, ``ComfyNode``, ``Schema``, ``NodeOutput``), ``ui`` (previews and saved
images), ``ComfyExtension`` (what a pack's ``comfy_entrypoint`` returns), ``IO`` / ``UI``
(aliases) and ``Input`` / ``InputImpl`` / ``Types``, where the video classes are
placeholders that refuse to be used, naming themselves. ``ComfyAPI`` / ``ComfyAPISync``:
the API object (``api.execution.set_progress``), reporting as ``ProgressBar`` does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NoReturn

import torch

from comfy_compat.shims._missing import missing_attributes, missing_message

from . import _io as io
from . import _ui as ui
from ._api import ComfyAPI, ComfyAPI_latest, ComfyAPISync

IO = io
UI = ui


class ComfyExtension(ABC):
    """What ``comfy_entrypoint()`` returns: the pack's V3 node classes."""

    async def on_load(self) -> None:  # noqa: B027 (optional hook)
        """Called once, before ``get_node_list``."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """The node classes of the pack."""


class _Refused(type):
    """A placeholder class: using it (creating one, reading a member) raises."""

    def __call__(cls, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise NotImplementedError(cls.REFUSED)

    def __getattr__(cls, name: str) -> NoReturn:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(cls.REFUSED)


def _placeholder(qualname: str, what: str) -> type:
    message = missing_message(qualname, what)
    return _Refused(qualname.rpartition(".")[2], (), {"REFUSED": message, "__doc__": message})


_VIDEO = "ComfyUI's video objects do not exist in Steerflow"
VideoInput = _placeholder("comfy_api.latest.Input.Video", _VIDEO)


class Input:
    """The value types, for type hints and ``isinstance``."""

    Image = torch.Tensor
    Mask = torch.Tensor
    Latent = dict
    Audio = dict
    Video = VideoInput


class InputImpl:
    VideoFromFile = _placeholder("comfy_api.latest.InputImpl.VideoFromFile", _VIDEO)
    VideoFromComponents = _placeholder("comfy_api.latest.InputImpl.VideoFromComponents", _VIDEO)


class Types:
    VideoCodec = _placeholder("comfy_api.latest.Types.VideoCodec", _VIDEO)
    VideoContainer = _placeholder("comfy_api.latest.Types.VideoContainer", _VIDEO)
    VideoComponents = _placeholder("comfy_api.latest.Types.VideoComponents", _VIDEO)


__all__ = ["IO", "UI", "ComfyAPI", "ComfyAPISync", "ComfyAPI_latest", "ComfyExtension", "Input",
           "InputImpl", "Types", "io", "ui"]

__getattr__ = missing_attributes("comfy_api.latest", "not part of Steerflow's V3 API")
