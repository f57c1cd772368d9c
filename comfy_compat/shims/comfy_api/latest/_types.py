"""ComfyUI's V3 socket types (``io.Int``, ``io.Image``, ``io.Custom("X")``, ...).

Each type is a class with an ``io_type`` and nested ``Input`` / ``Output`` classes that
describe one socket; ``Input.as_dict()`` gives the options of ComfyUI's V1 spec tuple
``(io_type, options)`` (``None`` options left out, as ComfyUI does). The types whose
values Steerflow cannot give (``io.Video``, multi-select combos, DynamicSlot) refuse to
build a socket, with a message naming them: the node using one fails to load, not the
pack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import Enum, StrEnum
from typing import Any, NoReturn

import torch

from comfy_compat.shims._missing import missing_message


def prune_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _value(option: Any) -> Any:
    return option.value if isinstance(option, Enum) else option


class FolderType(StrEnum):
    input = "input"
    output = "output"
    temp = "temp"


class UploadType(StrEnum):
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class NumberDisplay(StrEnum):
    number = "number"
    slider = "slider"


class RemoteOptions:
    """A combo whose options the front end fetches from a route."""

    def __init__(self, route: str, refresh_button: bool,
                 control_after_refresh: str = "first", timeout: int | None = None,
                 max_retries: int | None = None, refresh: int | None = None):
        self.options = {"route": route, "refresh_button": refresh_button,
                        "control_after_refresh": control_after_refresh, "timeout": timeout,
                        "max_retries": max_retries, "refresh": refresh}

    def as_dict(self) -> dict[str, Any]:
        return prune_dict(self.options)


class _ComfyType:
    Type: Any = Any
    io_type: str | None = None


class Input:
    """One input socket; ``Parent`` is its type (set by :func:`comfytype`)."""

    Parent: Any = None

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                 tooltip: str | None = None, lazy: bool | None = None,
                 extra_dict: dict[str, Any] | None = None, raw_link: bool | None = None,
                 advanced: bool | None = None, **options: Any):
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.raw_link = raw_link
        self.advanced = advanced
        # options newer ComfyUI versions add: passed on to the front end as they are
        self.extra_dict = {**(extra_dict or {}), **options}

    @property
    def io_type(self) -> str:
        return self.Parent.io_type

    @property
    def Type(self) -> Any:
        return self.Parent.Type

    def as_dict(self) -> dict[str, Any]:
        return prune_dict({"display_name": self.display_name, "optional": self.optional,
                           "tooltip": self.tooltip, "lazy": self.lazy,
                           "rawLink": self.raw_link, "advanced": self.advanced}) \
            | prune_dict(self.extra_dict)

    def get_io_type(self) -> str:
        return self.io_type

    def get_all(self) -> list[Input]:
        return [self]

    def validate(self) -> None:
        pass


class WidgetInput(Input):
    """An input with a widget (a constant in the prompt)."""

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                 tooltip: str | None = None, lazy: bool | None = None, default: Any = None,
                 socketless: bool | None = None, widget_type: str | None = None,
                 force_input: bool | None = None, extra_dict: dict[str, Any] | None = None,
                 raw_link: bool | None = None, advanced: bool | None = None, **options: Any):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link,
                         advanced, **options)
        self.default = _value(default)
        self.socketless = socketless
        self.widget_type = widget_type
        self.force_input = force_input

    def as_dict(self) -> dict[str, Any]:
        return super().as_dict() | prune_dict({
            "default": self.default, "socketless": self.socketless,
            "widgetType": self.widget_type, "forceInput": self.force_input})

    def get_io_type(self) -> str:
        return self.widget_type or super().get_io_type()


class Output:
    """One output socket."""

    Parent: Any = None

    def __init__(self, id: str | None = None, display_name: str | None = None,
                 tooltip: str | None = None, is_output_list: bool = False, **_options: Any):
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    @property
    def io_type(self) -> str:
        return self.Parent.io_type

    def get_io_type(self) -> str:
        return self.io_type

    def validate(self) -> None:
        pass


class ComfyTypeI(_ComfyType):
    """A type with inputs only."""

    Input = Input


class ComfyTypeIO(ComfyTypeI):
    """A type with inputs and outputs."""

    Output = Output


def comfytype(io_type: str, **_kwargs: Any) -> Callable[[type], type]:
    """Make ``cls`` the socket type ``io_type``; its ``Input`` / ``Output`` become this
    type's own subclasses (so an inherited socket class knows its new parent)."""

    def decorate(cls: type) -> type:
        if not issubclass(cls, _ComfyType):
            body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
            cls = type(cls.__name__, (cls, ComfyTypeIO), body)
        cls.io_type = io_type
        for name in ("Input", "Output"):
            socket = getattr(cls, name, None)
            if isinstance(socket, type):
                own = type(socket.__name__, (socket,), {
                    "__module__": cls.__module__, "__qualname__": f"{cls.__qualname__}.{name}",
                    "__doc__": socket.__doc__, "Parent": cls})
                setattr(cls, name, own)
        return cls

    return decorate


def Custom(io_type: str) -> type[ComfyTypeIO]:
    """A type of the pack's own (``io.Custom("MY_TYPE")``)."""
    return comfytype(io_type)(type("CustomComfyType", (ComfyTypeIO,), {"__module__": __name__}))


def _plain(name: str, io_type: str, value_type: Any = Any) -> Any:
    cls = type(name, (ComfyTypeIO,), {"Type": value_type, "__module__": __name__,
                                      "__qualname__": name})
    return comfytype(io_type)(cls)


# --- widget types -------------------------------------------------------------------

@comfytype(io_type="BOOLEAN")
class Boolean(ComfyTypeIO):
    Type = bool

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None,
                     default: bool | None = None, label_on: str | None = None,
                     label_off: str | None = None, socketless: bool | None = None,
                     force_input: bool | None = None, **options: Any):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless,
                             None, force_input, **options)
            self.labels = {"label_on": label_on, "label_off": label_off}

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | prune_dict(self.labels)


class _NumberInput(WidgetInput):
    def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                 tooltip: str | None = None, lazy: bool | None = None, default: Any = None,
                 min: float | None = None, max: float | None = None,
                 step: float | None = None, control_after_generate: bool | None = None,
                 display_mode: NumberDisplay | None = None, socketless: bool | None = None,
                 force_input: bool | None = None, round: float | None = None,
                 **options: Any):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless,
                         None, force_input, **options)
        self.numbers = {"min": min, "max": max, "step": step, "round": round,
                        "control_after_generate": control_after_generate,
                        "display": _value(display_mode)}

    def as_dict(self) -> dict[str, Any]:
        return super().as_dict() | prune_dict(self.numbers)


@comfytype(io_type="INT")
class Int(ComfyTypeIO):
    Type = int
    Input = _NumberInput


@comfytype(io_type="FLOAT")
class Float(ComfyTypeIO):
    Type = float
    Input = _NumberInput


@comfytype(io_type="STRING")
class String(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None,
                     multiline: bool = False, placeholder: str | None = None,
                     default: str | None = None, dynamic_prompts: bool | None = None,
                     socketless: bool | None = None, force_input: bool | None = None,
                     **options: Any):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless,
                             None, force_input, **options)
            self.text = {"multiline": multiline, "placeholder": placeholder,
                         "dynamicPrompts": dynamic_prompts}

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | prune_dict(self.text)


@comfytype(io_type="COMBO")
class Combo(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, options: Iterable[Any] | type[Enum] | None = None,
                     display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None,
                     default: Any = None, control_after_generate: bool | None = None,
                     upload: UploadType | None = None, image_folder: FolderType | None = None,
                     remote: RemoteOptions | None = None, socketless: bool | None = None,
                     **extra: Any):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless,
                             None, None, **extra)
            self.options = None if options is None else [_value(o) for o in options]
            self.combo = {"multiselect": False, "options": self.options,
                          "control_after_generate": control_after_generate,
                          "image_folder": _value(image_folder),
                          "remote": remote.as_dict() if remote is not None else None}
            if upload is not None:
                self.combo[_value(upload)] = True

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | prune_dict(self.combo)

    class Output(Output):
        def __init__(self, id: str | None = None, display_name: str | None = None,
                     options: list[Any] | None = None, tooltip: str | None = None,
                     is_output_list: bool = False, **extra: Any):
            super().__init__(id, display_name, tooltip, is_output_list, **extra)
            self.options = options or []


@comfytype(io_type="WEBCAM")
class Webcam(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        pass


# --- value types (passed through as they are) ----------------------------------------

Image = _plain("Image", "IMAGE", torch.Tensor)
Mask = _plain("Mask", "MASK", torch.Tensor)
Latent = _plain("Latent", "LATENT", dict)
Conditioning = _plain("Conditioning", "CONDITIONING", list)
Sampler = _plain("Sampler", "SAMPLER")
Sigmas = _plain("Sigmas", "SIGMAS", torch.Tensor)
Noise = _plain("Noise", "NOISE")
Guider = _plain("Guider", "GUIDER")
Clip = _plain("Clip", "CLIP")
ControlNet = _plain("ControlNet", "CONTROL_NET")
Vae = _plain("Vae", "VAE")
Model = _plain("Model", "MODEL")
ClipVision = _plain("ClipVision", "CLIP_VISION")
ClipVisionOutput = _plain("ClipVisionOutput", "CLIP_VISION_OUTPUT")
StyleModel = _plain("StyleModel", "STYLE_MODEL")
Gligen = _plain("Gligen", "GLIGEN")
UpscaleModel = _plain("UpscaleModel", "UPSCALE_MODEL")
LatentUpscaleModel = _plain("LatentUpscaleModel", "LATENT_UPSCALE_MODEL")
Audio = _plain("Audio", "AUDIO", dict)
SVG = _plain("SVG", "SVG")
LoraModel = _plain("LoraModel", "LORA_MODEL", dict)
LossMap = _plain("LossMap", "LOSS_MAP", dict)
Voxel = _plain("Voxel", "VOXEL")
Mesh = _plain("Mesh", "MESH")
Hooks = _plain("Hooks", "HOOKS")
HookKeyframes = _plain("HookKeyframes", "HOOK_KEYFRAMES")
TimestepsRange = _plain("TimestepsRange", "TIMESTEPS_RANGE", tuple)
LatentOperation = _plain("LatentOperation", "LATENT_OPERATION")
FlowControl = _plain("FlowControl", "FLOW_CONTROL", tuple)
Accumulation = _plain("Accumulation", "ACCUMULATION", dict)
Load3DCamera = _plain("Load3DCamera", "LOAD3D_CAMERA", dict)
Load3D = _plain("Load3D", "LOAD_3D", dict)
Load3DAnimation = _plain("Load3DAnimation", "LOAD_3D_ANIMATION", dict)
Photomaker = _plain("Photomaker", "PHOTOMAKER")
Point = _plain("Point", "POINT")
FaceAnalysis = _plain("FaceAnalysis", "FACE_ANALYSIS")
BBOX = _plain("BBOX", "BBOX")
SEGS = _plain("SEGS", "SEGS")
MODEL_PATCH = _plain("MODEL_PATCH", "MODEL_PATCH")
AudioEncoder = _plain("AudioEncoder", "AUDIO_ENCODER")
AudioEncoderOutput = _plain("AudioEncoderOutput", "AUDIO_ENCODER_OUTPUT")
Tracks = _plain("Tracks", "TRACKS", dict)
WanCameraEmbedding = _plain("WanCameraEmbedding", "WAN_CAMERA_EMBEDDING", torch.Tensor)
AnyType = _plain("AnyType", "*")


# --- several types, one type for several sockets ----------------------------------------

@comfytype(io_type="COMFY_MULTITYPED_V3")
class MultiType(_ComfyType):
    """An input taking any of several types: ComfyUI's comma-joined V1 type ("IMAGE,MASK");
    given an ``Input`` as ``id``, that input's widget and options are kept."""

    class Input(Input):
        def __init__(self, id: str | Input, types: list[Any], display_name: str | None = None,
                     optional: bool = False, tooltip: str | None = None,
                     lazy: bool | None = None, **options: Any):
            self.override = id if isinstance(id, Input) else None
            if self.override is not None:
                optional = optional or self.override.optional
                tooltip = self.override.tooltip if self.override.tooltip is not None else tooltip
                lazy = self.override.lazy if self.override.lazy is not None else lazy
                display_name = self.override.display_name or display_name
                id = self.override.id
            super().__init__(id, display_name, optional, tooltip, lazy, **options)
            self.types = [t if isinstance(t, type) else type(t) for t in types]

        def get_io_type(self) -> str:
            names = [t.io_type for t in self.types]
            if self.override is not None:
                names.insert(0, self.override.get_io_type())
            return ",".join(dict.fromkeys(names))

        def as_dict(self) -> dict[str, Any]:
            mine = super().as_dict()
            if self.override is None:
                return mine
            widget = {"widgetType": self.override.get_io_type()} \
                if isinstance(self.override, WidgetInput) else {}
            return self.override.as_dict() | widget | mine


@comfytype(io_type="*")
class MatchType(ComfyTypeIO):
    """Sockets whose types must match (a template): the front end narrows them; to
    Steerflow they are ``*`` (any type), the template kept in the options."""

    class Template:
        def __init__(self, template_id: str, allowed_types: Any = None):
            if allowed_types is None:
                allowed_types = [AnyType]
            if not isinstance(allowed_types, Iterable):
                allowed_types = [allowed_types]
            self.template_id = template_id
            self.allowed_types = list(allowed_types)

        def as_dict(self) -> dict[str, Any]:
            return {"template_id": self.template_id,
                    "allowed_types": ",".join(t.io_type for t in self.allowed_types)}

    class Input(Input):
        def __init__(self, id: str, template: MatchType.Template, display_name: str | None = None,
                     optional: bool = False, tooltip: str | None = None,
                     lazy: bool | None = None, **options: Any):
            super().__init__(id, display_name, optional, tooltip, lazy, **options)
            self.template = template

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | {"template": self.template.as_dict()}

    class Output(Output):
        def __init__(self, template: MatchType.Template, id: str | None = None,
                     display_name: str | None = "MATCHTYPE", tooltip: str | None = None,
                     is_output_list: bool = False, **options: Any):
            super().__init__(id, display_name, tooltip, is_output_list, **options)
            self.template = template


# --- refused: values or sockets Steerflow cannot give -----------------------------------

def _refused(name: str, io_type: str, what: str, *helpers: str) -> Any:
    message = missing_message(f"comfy_api.latest.io.{name}", what)

    def refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise NotImplementedError(message)

    body: dict[str, Any] = {"Type": Any, "__module__": __name__, "__qualname__": name,
                            "__doc__": message, "REFUSED": message}
    body["Input"] = type("Input", (Input,), {"__init__": refuse})
    body["Output"] = type("Output", (Output,), {"__init__": refuse})
    body.update({helper: staticmethod(refuse) for helper in helpers})
    return comfytype(io_type)(type(name, (ComfyTypeIO,), body))


Video = _refused("Video", "VIDEO", "ComfyUI's video objects (VideoInput) do not exist here")
MultiCombo = _refused("MultiCombo", "COMBO", "multi-select combos are not supported")
DynamicSlot = _refused("DynamicSlot", "COMFY_DYNAMICSLOT_V3",
                       "sockets that add inputs when linked are not supported")
