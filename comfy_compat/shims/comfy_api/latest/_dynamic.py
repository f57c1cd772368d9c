"""ComfyUI's V3 dynamic inputs: ``io.Autogrow`` (a growing list of like inputs) and
``io.DynamicCombo`` (a choice that brings inputs of its own).

Both present ComfyUI's V1 spec entry (``("COMFY_AUTOGROW_V3", {"template": ...})``,
``("COMFY_DYNAMICCOMBO_V3", {"options": [...]})``), which the pack adapter declares
with the engine's own Autogrow and DynamicCombo (``engine.autogrow``,
``engine.dynamic``), so validation, ``/object_info`` and both front ends treat them as
the built-in ones. In the prompt their values are siblings with dotted names
(``images.image0``, ``resize_type.width``); :func:`nest_inputs` gathers them into the
dicts ComfyUI hands ``execute``: ``images={"image0": ..., "image1": ...}`` and
``resize_type={"resize_type": "scale dimensions", "width": 512, ...}``.
A dynamic input inside another is refused when the node loads (the engine's dynamic
inputs do not nest).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from ._types import ComfyTypeI, Input, WidgetInput, comfytype, prune_dict

MAX_NAMES = 100  # ComfyUI's limit on an Autogrow's slots


class DynamicInput(Input):
    """Base of the sockets that expand into others."""


def _v1_section(inputs: Iterable[Input]) -> dict[str, Any]:
    """ComfyUI's ``create_input_dict_v1``: ``{"required": {id: (type, options)}, ...}``."""
    sections: dict[str, Any] = {"required": {}}
    for item in inputs:
        options = item.as_dict()
        options.pop("optional", None)
        section = "optional" if item.optional else "required"
        sections.setdefault(section, {})[item.id] = (item.get_io_type(), options)
    return sections


def _not_dynamic(item: Any, where: str) -> None:
    if isinstance(item, DynamicInput):
        raise NotImplementedError(f"{where}: a dynamic input inside another (Autogrow or "
                                  "DynamicCombo nested) is not supported in Steerflow")
    if not isinstance(item, Input):
        raise TypeError(f"{where}: expected an io input, got {type(item).__name__}")


@comfytype(io_type="COMFY_AUTOGROW_V3")
class Autogrow(ComfyTypeI):
    """Inputs that grow as the last one is linked; ``execute`` gets a dict of them."""

    Type = dict

    class _Template:
        def __init__(self, input: Input):
            _not_dynamic(input, "Autogrow template")
            self.input = copy.copy(input)
            if isinstance(self.input, WidgetInput):
                self.input.force_input = True  # a slot is always a socket
            self.names: list[str] = []

        def get_all(self) -> list[Input]:
            slots = []
            for name in self.names:
                slot = copy.copy(self.input)
                slot.id = name
                slots.append(slot)
            return slots

        def as_dict(self) -> dict[str, Any]:
            return {"input": _v1_section([self.input])}

        def validate(self) -> None:
            self.input.validate()

    class TemplatePrefix(_Template):
        """Slots ``prefix0`` .. ``prefix{max-1}``, the first ``min`` required."""

        def __init__(self, input: Input, prefix: str, min: int = 1, max: int = 10):
            super().__init__(input)
            if not 0 <= min <= max or not 1 <= max <= MAX_NAMES:
                raise ValueError(f"Autogrow.TemplatePrefix: need 0 <= min <= max and "
                                 f"1 <= max <= {MAX_NAMES}, got min={min}, max={max}")
            self.prefix, self.min, self.max = prefix, min, max
            self.names = [f"{prefix}{i}" for i in range(max)]

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | {"prefix": self.prefix, "min": self.min,
                                        "max": self.max}

    class TemplateNames(_Template):
        """Slots with the given names, the first ``min`` required."""

        def __init__(self, input: Input, names: list[str], min: int = 1):
            super().__init__(input)
            self.names = [str(n) for n in names][:MAX_NAMES]
            if not 0 <= min <= len(self.names):
                raise ValueError(f"Autogrow.TemplateNames: min must be 0 to "
                                 f"{len(self.names)}, got {min}")
            self.min = min

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | {"names": self.names, "min": self.min}

    class Input(DynamicInput):
        def __init__(self, id: str, template: Autogrow._Template,
                     display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None,
                     extra_dict: dict[str, Any] | None = None, **options: Any):
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict,
                             **options)
            self.template = template

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | prune_dict({"template": self.template.as_dict()})

        def get_all(self) -> list[Input]:
            return [self, *self.template.get_all()]

        def validate(self) -> None:
            self.template.validate()


@comfytype(io_type="COMFY_DYNAMICCOMBO_V3")
class DynamicCombo(ComfyTypeI):
    """A combo whose chosen option brings its own inputs; ``execute`` gets a dict of the
    choice (under the combo's own id) and those inputs."""

    Type = dict

    class Option:
        def __init__(self, key: str, inputs: list[Input]):
            self.key = key
            self.inputs = list(inputs)
            for item in self.inputs:
                _not_dynamic(item, f"DynamicCombo option {key!r}")

        def as_dict(self) -> dict[str, Any]:
            return {"key": self.key, "inputs": _v1_section(self.inputs)}

    class Input(DynamicInput):
        def __init__(self, id: str, options: list[DynamicCombo.Option],
                     display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None,
                     extra_dict: dict[str, Any] | None = None, **extras: Any):
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, **extras)
            self.options = list(options)

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | {"options": [o.as_dict() for o in self.options]}

        def get_all(self) -> list[Input]:
            return [self, *(item for option in self.options for item in option.inputs)]

        def validate(self) -> None:
            for option in self.options:
                for item in option.inputs:
                    item.validate()


def nest_inputs(inputs: Iterable[Input], values: Mapping[str, Any]) -> dict[str, Any]:
    """One call's flat inputs (``images.image0``) as ComfyUI passes a V3 node's dynamic
    inputs: a dict per Autogrow (of the slots given; ``{}`` when none is) and per
    DynamicCombo given (its choice under its own id, then the chosen option's inputs)."""
    out = dict(values)
    for item in inputs:
        prefix = f"{item.id}."
        if isinstance(item, Autogrow.Input):
            out[item.id] = {name: out.pop(prefix + name) for name in item.template.names
                            if prefix + name in out}
        elif isinstance(item, DynamicCombo.Input) and item.id in out:
            chosen = {item.id: out.pop(item.id)}
            for key in [k for k in out if k.startswith(prefix)]:
                chosen[key.removeprefix(prefix)] = out.pop(key)
            out[item.id] = chosen
    return out


def has_dynamic(inputs: Iterable[Input]) -> bool:
    return any(isinstance(item, DynamicInput) for item in inputs)
