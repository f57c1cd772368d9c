"""ComfyUI's ``comfy.comfy_types.node_typing``: the typing helpers V1 node classes use.

``IO`` (the socket type names, a ``str`` enum: ``IO.IMAGE == "IMAGE"``; ``IO.ANY`` is
``"*"``), ``ComfyNodeABC`` (a base class naming the class attributes),
``CheckLazyMixin`` (a ``check_lazy_status`` that asks for every input not evaluated
yet), and the ``TypedDict``s ``InputTypeDict``, ``InputTypeOptions``,
``HiddenInputTypeDict`` and ``FileLocator``. They are plain Python, as in ComfyUI, so a
node written with them is an ordinary V1 node to the adapter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum
from typing import Any, Literal, NotRequired, TypedDict


class IO(StrEnum):
    """Socket type names. ``!=`` follows ComfyUI's link check: ``"*"`` matches every
    type, and a comma list (``"FLOAT,INT"``) matches a type it contains or is contained
    in; ``==`` stays plain string equality, as in ComfyUI."""

    STRING = "STRING"
    IMAGE = "IMAGE"
    MASK = "MASK"
    LATENT = "LATENT"
    BOOLEAN = "BOOLEAN"
    INT = "INT"
    FLOAT = "FLOAT"
    COMBO = "COMBO"
    CONDITIONING = "CONDITIONING"
    SAMPLER = "SAMPLER"
    SIGMAS = "SIGMAS"
    GUIDER = "GUIDER"
    NOISE = "NOISE"
    CLIP = "CLIP"
    CONTROL_NET = "CONTROL_NET"
    VAE = "VAE"
    MODEL = "MODEL"
    CLIP_VISION = "CLIP_VISION"
    CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
    STYLE_MODEL = "STYLE_MODEL"
    GLIGEN = "GLIGEN"
    UPSCALE_MODEL = "UPSCALE_MODEL"
    AUDIO = "AUDIO"
    WEBCAM = "WEBCAM"
    POINT = "POINT"
    FACE_ANALYSIS = "FACE_ANALYSIS"
    BBOX = "BBOX"
    SEGS = "SEGS"
    ANY = "*"
    NUMBER = "FLOAT,INT"
    PRIMITIVE = "STRING,FLOAT,INT,BOOLEAN"

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, str):
            return True
        if "*" in (self.value, other):
            return False
        mine, theirs = set(self.value.split(",")), set(other.split(","))
        return not (mine <= theirs or theirs <= mine)

    # StrEnum hashes by member name; hash as the string, so IO.ANY finds "*" in a dict
    __hash__ = str.__hash__


class RemoteInputOptions(TypedDict):
    route: str
    refresh_button: bool
    control_after_refresh: Literal["first", "last"]
    timeout: int
    max_retries: int
    refresh: int


class MultiSelectOptions(TypedDict):
    placeholder: NotRequired[str]
    chip: NotRequired[bool]


class InputTypeOptions(TypedDict, total=False):
    """The options dict of an input (every option, whatever the type, as in ComfyUI)."""

    default: bool | str | float | int | list | tuple
    defaultInput: bool
    forceInput: bool
    lazy: bool
    rawLink: bool
    tooltip: str
    min: float
    max: float
    step: float
    round: float
    label_on: str
    label_off: str
    multiline: bool
    placeholder: str
    dynamicPrompts: bool
    image_upload: bool
    image_folder: Literal["input", "output", "temp"]
    remote: RemoteInputOptions
    control_after_generate: bool
    options: list[str | int | float]
    multi_select: MultiSelectOptions


class HiddenInputTypeDict(TypedDict, total=False):
    node_id: Literal["UNIQUE_ID"]
    unique_id: Literal["UNIQUE_ID"]
    prompt: Literal["PROMPT"]
    extra_pnginfo: Literal["EXTRA_PNGINFO"]
    dynprompt: Literal["DYNPROMPT"]


class InputTypeDict(TypedDict, total=False):
    """What ``INPUT_TYPES()`` returns."""

    required: dict[str, tuple[IO, InputTypeOptions]]
    optional: dict[str, tuple[IO, InputTypeOptions]]
    hidden: HiddenInputTypeDict


class ComfyNodeABC(ABC):
    """A V1 node's class attributes, for type checkers; ``INPUT_TYPES`` is abstract."""

    DESCRIPTION: str
    CATEGORY: str
    EXPERIMENTAL: bool
    DEPRECATED: bool
    OUTPUT_NODE: bool
    INPUT_IS_LIST: bool
    OUTPUT_IS_LIST: tuple[bool, ...]
    RETURN_TYPES: tuple[IO | str, ...]
    RETURN_NAMES: tuple[str, ...]
    OUTPUT_TOOLTIPS: tuple[str, ...]
    FUNCTION: str

    @classmethod
    @abstractmethod
    def INPUT_TYPES(cls) -> InputTypeDict:
        return {"required": {}}


class CheckLazyMixin:
    """Lazy inputs: ask for every one not evaluated yet (given as ``None``)."""

    def check_lazy_status(self, **kwargs: Any) -> list[str]:
        return [name for name, value in kwargs.items() if value is None]


class FileLocator(TypedDict, total=False):
    filename: str
    subfolder: str
    type: Literal["input", "output", "temp"]


__all__ = ["IO", "CheckLazyMixin", "ComfyNodeABC", "FileLocator", "HiddenInputTypeDict",
           "InputTypeDict", "InputTypeOptions", "MultiSelectOptions", "RemoteInputOptions"]
