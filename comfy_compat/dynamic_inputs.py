"""A ComfyUI class's dynamic inputs (V3's ``io.Autogrow`` and ``io.DynamicCombo``, in
their V1 spec form) as the engine's own Autogrow and DynamicCombo specs.

``INPUT_TYPES()`` lists one entry for each: ``("COMFY_AUTOGROW_V3", {"template":
{"input": {"required": {"image": ...}}, "prefix": "image", "min": 1, "max": 10}})`` or
``("COMFY_DYNAMICCOMBO_V3", {"options": [{"key": ..., "inputs": {...}}]})``. The
engine's specs name the expanded inputs as ComfyUI's prompt does (``images.image0``,
``resize_type.width``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from engine.autogrow import AUTOGROW, grow
from engine.dynamic import combo_specs
from engine.node import InputSpec

DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
DYNAMIC_TYPES = frozenset({AUTOGROW, DYNAMIC_COMBO, "COMFY_DYNAMICSLOT_V3"})

# (name, entry, required) -> the spec, as the adapter builds a plain input
MakeSpec = Callable[[str, Any, bool], InputSpec]


def is_dynamic(entry: Any) -> bool:
    kind = entry[0] if isinstance(entry, list | tuple) and entry else entry
    # a plain copy: a pack's "any type" str subclass may equal everything, unhashable
    return isinstance(kind, str) and "".join(kind) in DYNAMIC_TYPES


def dynamic_specs(name: str, entry: Any, required: bool, make: MakeSpec
                  ) -> dict[str, InputSpec]:
    """The specs of dynamic input ``name`` (its ``INPUT_TYPES`` ``entry``); TypeError for
    a form the engine cannot give (DynamicSlot, a dynamic input nested in another)."""
    kind = entry[0]
    options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    if kind == AUTOGROW:
        return _autogrow(name, options, required, make)
    if kind == DYNAMIC_COMBO:
        return _dynamic_combo(name, options, required, make)
    raise TypeError(f"input {name!r}: {kind} (sockets that add inputs when linked) is not "
                    "supported in Steerflow")


def _sections(inputs: Any, where: str) -> list[tuple[str, Any, bool]]:
    """``(name, entry, required)`` of a ``{"required": {...}, "optional": {...}}``."""
    if not isinstance(inputs, dict):
        raise TypeError(f"{where}: inputs must be a dict of sections, got {inputs!r}")
    found = []
    for section in ("required", "optional"):
        for sub, entry in (inputs.get(section) or {}).items():
            if is_dynamic(entry):
                raise TypeError(f"{where}: input {sub!r} is dynamic inside a dynamic input; "
                                "nesting them is not supported in Steerflow")
            found.append((str(sub), entry, section == "required"))
    return found


def _autogrow(name: str, options: dict[str, Any], required: bool, make: MakeSpec
              ) -> dict[str, InputSpec]:
    template = options.get("template")
    if not isinstance(template, dict):
        raise TypeError(f"Autogrow {name!r}: no template")
    inputs = _sections(template.get("input"), f"Autogrow {name!r}")
    if not inputs:
        raise TypeError(f"Autogrow {name!r}: its template has no input")
    first, entry, template_required = inputs[0]
    names = template.get("names")
    return grow(name, first, lambda slot: make(slot, entry, template_required),
                prefix=None if names is not None else str(template.get("prefix", "")),
                names=[str(n) for n in names] if names is not None else None,
                min=int(template.get("min", 1)),
                max=int(template.get("max", 10)) if names is None else 10,
                optional=not required)


def _dynamic_combo(name: str, options: dict[str, Any], required: bool, make: MakeSpec
                   ) -> dict[str, InputSpec]:
    choices = options.get("options")
    if not isinstance(choices, list) or not choices or not all(
            isinstance(c, dict) and "key" in c for c in choices):
        raise TypeError(f"DynamicCombo {name!r}: options must be a list of "
                        "{'key', 'inputs'}")
    keys = [str(c["key"]) for c in choices]
    default = options.get("default")
    combo = make(name, (keys, {**options, "options": None,
                               "default": default if default in keys else keys[0]}),
                 required)
    built = {str(c["key"]): [_static(make(f"{name}.{sub}", entry, sub_required), entry)
                             for sub, entry, sub_required in
                             _sections(c.get("inputs") or {}, f"DynamicCombo {name!r}")]
             for c in choices}
    return combo_specs(replace(combo, choices=tuple(keys)), built)


def _static(spec: InputSpec, entry: Any) -> InputSpec:
    """An option's combo with its listed choices (fixed in the schema), so that two
    options sharing it compare equal (a choices function is new for each)."""
    if spec.type != "COMBO" or not callable(spec.choices):
        return spec
    kind = entry[0] if isinstance(entry, list | tuple) and entry else entry
    options = entry[1] if isinstance(entry, list | tuple) and len(entry) > 1 \
        and isinstance(entry[1], dict) else {}
    listed = kind if isinstance(kind, list | tuple) else options.get("options")
    if not isinstance(listed, list | tuple) or options.get("remote"):
        return spec  # fetched from a route: read when asked
    return replace(spec, choices=tuple(listed))


def entry_of(raw: dict[str, Any], name: str) -> Any:
    """The ``INPUT_TYPES`` entry of input ``name``, also of an Autogrow slot or a
    DynamicCombo option's input (``group.sub``); None if there is none."""
    for section in ("required", "optional"):
        entry = (raw.get(section) or {}).get(name)
        if entry is not None:
            return entry
    group, dot, sub = name.partition(".")
    if not dot:
        return None
    for section in ("required", "optional"):
        entry = (raw.get(section) or {}).get(group)
        if not is_dynamic(entry) or len(entry) < 2 or not isinstance(entry[1], dict):
            continue
        if entry[0] == AUTOGROW:
            inputs = (entry[1].get("template") or {}).get("input") or {}
            for part in ("required", "optional"):
                for template in (inputs.get(part) or {}).values():
                    return template
        for option in entry[1].get("options") or ():
            inputs = option.get("inputs") or {} if isinstance(option, dict) else {}
            for part in ("required", "optional"):
                found = (inputs.get(part) or {}).get(sub)
                if found is not None:
                    return found
    return None
