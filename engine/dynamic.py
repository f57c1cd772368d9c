"""ComfyUI's dynamic inputs: DynamicCombo (a choice that brings its own inputs) and
MatchType (an output whose type is that of what is linked to an input).

A DynamicCombo is a COMBO input whose options each bring inputs of their own. In
ComfyUI's API prompt those are siblings with dotted names: choosing ``"scale
dimensions"`` for ``resize_type`` brings ``resize_type.width``,
``resize_type.height`` and ``resize_type.crop``::

    {"resize_type": "scale dimensions", "resize_type.width": 512,
     "resize_type.height": 512, "resize_type.crop": "center"}

Only the chosen option's inputs are validated (bounded, choices, required sockets) and
given to the node; another option's are reported as ignored. A node declares one with
:func:`dynamic_combo` in a :class:`engine.node.NamedInputsNode`'s ``INPUT_SPECS``; its
schema (``/object_info``) is ComfyUI's ``["COMFY_DYNAMICCOMBO_V3", {"options": [{"key",
"inputs": {"required": {...}}}]}]``, which ComfyUI's front end (1.33 and later) draws
as a combo followed by the chosen option's widgets and sockets.

A MatchType input (``Input(type="IMAGE,MASK", match="t")``) takes any of its types; an
``Output(..., match="t")`` then has the type of what is linked to the inputs of
template ``t``, which :class:`OutputTypes` works out before the run, so a MASK passed
through such a node cannot feed an IMAGE input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from engine.node import ANY_TYPE, DynamicOption, InputSpec, input_spec
from engine.workflow import is_link

if TYPE_CHECKING:
    from engine.node import Node

# An option's inputs: name -> (Python type, Input(...)), as for input_spec.
OptionInputs = Mapping[str, tuple[Any, Any]]
# what options sharing an input must agree on (bounds, defaults and descriptions may
# differ: each option's own are used where it is chosen, as in ComfyUI)
_COMPARED = ("type", "choices", "force_input", "wide", "allow_nonfinite", "multiline",
             "lazy", "raw_link", "match")


def dynamic_combo(name: str, options: Mapping[str, OptionInputs], *,
                  description: str = "", default: str | None = None
                  ) -> dict[str, InputSpec]:
    """``INPUT_SPECS`` entries of a DynamicCombo ``name``: the combo (its choices the
    keys of ``options``, the first the default unless ``default``), then each input an
    option brings, named ``"name.sub"``.

    An input two options share (ComfyUI's Resize Image/Mask has ``width`` in two) must
    be declared alike (type, choices); its bounds, default and description may differ.
    """
    from engine.node import Input

    if not options:
        raise TypeError(f"DynamicCombo {name!r} needs at least one option")
    keys = list(options)
    chosen = keys[0] if default is None else default
    if chosen not in keys:
        raise TypeError(f"DynamicCombo {name!r}: default {chosen!r} is not an option")
    combo = input_spec(name, str, Input(chosen, choices=keys, description=description))
    return combo_specs(combo, {key: [input_spec(f"{name}.{sub}", annotation, field)
                                     for sub, (annotation, field) in inputs.items()]
                               for key, inputs in options.items()})


def combo_specs(combo: InputSpec, options: Mapping[str, Sequence[InputSpec]]
                ) -> dict[str, InputSpec]:
    """:func:`dynamic_combo` from built specs: ``combo`` (a COMBO whose choices are
    the option keys) and each option's inputs, already named ``"combo.sub"`` (how the
    ComfyUI pack adapter declares one)."""
    name = combo.name
    if not options:
        raise TypeError(f"DynamicCombo {name!r} needs at least one option")
    flat: dict[str, InputSpec] = {}
    built: list[DynamicOption] = []
    for key, specs in options.items():
        own: list[InputSpec] = []
        for spec in specs:
            sub = spec.name.removeprefix(f"{name}.")
            if spec.dynamic is not None or spec.autogrow:
                raise TypeError(f"DynamicCombo {name!r}: option {key!r} input {sub!r} "
                                "cannot itself be dynamic")
            spec = replace(spec, parent=name)
            first = flat.setdefault(spec.name, spec)
            if any(getattr(first, a) != getattr(spec, a) for a in _COMPARED):
                raise TypeError(f"DynamicCombo {name!r}: input {sub!r} is declared "
                                f"differently in two options; give them different names")
            own.append(spec)
        built.append(DynamicOption(str(key), tuple(own)))
    return {name: replace(combo, dynamic=tuple(built)), **flat}


def has_dynamic(cls: type[Node]) -> bool:
    """Whether a node class has a DynamicCombo (remembered per class)."""
    found = _DYNAMIC.get(cls)
    if found is None:
        found = _DYNAMIC[cls] = any(s.dynamic is not None for s in cls.INPUT_SPECS.values())
    return found


_DYNAMIC: dict[type, bool] = {}


def chosen_option(combo: InputSpec, value: Any) -> DynamicOption | None:
    """The option ``value`` (the combo's constant; None: left out, the default) picks;
    None for a value that is no option (the combo's own check reports it)."""
    key = combo.default if value is None else value
    for option in combo.dynamic or ():
        if option.key == key:
            return option
    return None


def active_specs(specs: Mapping[str, InputSpec], inputs: Mapping[str, Any]
                 ) -> dict[str, InputSpec]:
    """The inputs a node has given its constants: every one not brought by a
    DynamicCombo option, and after each combo the inputs its chosen option brings
    (with that option's defaults and descriptions)."""
    out: dict[str, InputSpec] = {}
    for name, spec in specs.items():
        if spec.parent is not None:
            continue
        out[name] = spec
        if spec.dynamic is not None:
            value = inputs.get(name)
            option = None if is_link(value) else chosen_option(spec, value)
            for sub in option.inputs if option else ():
                out[sub.name] = sub
    return out


def ignored_message(specs: Mapping[str, InputSpec], name: str,
                    inputs: Mapping[str, Any]) -> str:
    """Why an input some other option of its DynamicCombo brings is ignored."""
    spec = specs[name]
    combo = specs[spec.parent or ""]
    keys = [o.key for o in combo.dynamic or () if any(s.name == name for s in o.inputs)]
    chosen = inputs.get(combo.name, combo.default)
    return (f"input {name!r} belongs to {combo.name} "
            f"{' / '.join(repr(k) for k in keys)}, not the chosen {str(chosen)[:80]!r}; "
            "ignored")


class OutputTypes:
    """Each output's type in one prompt: the declared one, or for a MatchType output
    the declared types narrowed to those of what is linked to its template's inputs
    (followed upstream through other MatchType nodes)."""

    def __init__(self, classes: Mapping[str, type[Node]],
                 inputs: Mapping[str, Mapping[str, Any]]):
        self.classes, self.inputs = classes, inputs
        self._memo: dict[tuple[str, int], str] = {}

    def __call__(self, node_id: str, index: int) -> str:
        return self._type(node_id, index, set())

    def _type(self, node_id: str, index: int, seen: set[tuple[str, int]]) -> str:
        key = (node_id, index)
        if key in self._memo:
            return self._memo[key]
        cls = self.classes[node_id]
        output = cls.OUTPUTS[index]
        if output.match is None or key in seen:  # a cycle is reported elsewhere
            return output.type
        seen.add(key)
        allowed = output.type.split(",")
        narrowed = allowed
        raw = self.inputs.get(node_id) or {}
        for name, spec in cls.INPUT_SPECS.items():
            value = raw.get(name)
            if spec.match != output.match or not is_link(value):
                continue
            src = str(value[0])
            src_cls = self.classes.get(src)
            if src_cls is None or not 0 <= value[1] < len(src_cls.OUTPUTS):
                continue  # a bad link: reported on the input itself
            linked = self._type(src, value[1], seen)
            if linked == ANY_TYPE:
                continue
            kept = [t for t in narrowed if t in linked.split(",")]
            if kept:  # none: the input's own check reports the mismatch
                narrowed = kept
        result = ",".join(narrowed)
        self._memo[key] = result
        return result


OutputType = Callable[[str, int], str]
