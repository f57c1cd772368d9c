"""ComfyUI's Autogrow: a growing list of like inputs (Batch Images' ``images``).

An Autogrow group ``images`` of template input ``image`` holds slots ``image0``,
``image1``, ... (a prefix and a maximum) or named ones (``a`` .. ``z``). In ComfyUI's
API prompt each slot is a sibling input with a dotted name, ``images.image0``; the
engine validates and hands them to the node as ordinary inputs (one
:class:`~engine.node.InputSpec` each). The first ``min`` slots are required, unless
the template input itself is optional.

``/object_info`` lists the group once, as ComfyUI's backend does::

    "images": ["COMFY_AUTOGROW_V3", {"template": {
        "input": {"required": {"image": ["IMAGE", {}]}},
        "prefix": "image", "min": 2, "max": 50}}]

(``"names": [...]`` in place of ``prefix`` and ``max`` for named slots). ComfyUI's front
end draws the first slots and adds the next as the last one is linked; Steerflow's
canvas (``web/src/lib/schema.ts``) expands the same entry into its slots.

A node declares a group with :func:`autogrow` in a
:class:`~engine.node.NamedInputsNode`'s ``INPUT_SPECS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from engine.node import WIDGET_TYPES, input_spec

if TYPE_CHECKING:
    from engine.node import InputSpec

AUTOGROW = "COMFY_AUTOGROW_V3"  # ComfyUI's /object_info spelling
MAX_SLOTS = 100  # ComfyUI's limit on an Autogrow's names


@dataclass(frozen=True)
class Autogrow:
    """One Autogrow group, shared by the specs of its slots (``InputSpec.autogrow``)."""

    group: str
    template: str  # the template input's own name (ComfyUI's ``io.Image.Input("image")``)
    slots: tuple[str, ...]  # the slots' short names, in order
    min: int
    prefix: str | None = None  # slots are prefix + 0, 1, ...; else named (``names``)
    optional_template: bool = False  # the template input is optional: no slot required
    optional: bool = False  # the group itself is in the schema's ``optional`` section

    def slot_name(self, slot: str) -> str:
        """A slot's input name in the API prompt: ``images.image0``."""
        return f"{self.group}.{slot}"

    def schema(self, template: list[Any]) -> list[Any]:
        """The group's ``/object_info`` entry, given its template input's own entry."""
        section = "optional" if self.optional_template else "required"
        body: dict[str, Any] = {"input": {section: {self.template: template}}}
        if self.prefix is not None:
            body.update(prefix=self.prefix, min=self.min, max=len(self.slots))
        else:
            body.update(names=list(self.slots), min=self.min)
        return [AUTOGROW, {"template": body}]


def autogrow(group: str, template: str, annotation: Any, field: Any, *,
             prefix: str | None = None, names: Sequence[str] | None = None,
             min: int = 1, max: int = 10, optional: bool = False) -> dict[str, InputSpec]:
    """The specs of Autogrow group ``group`` (name -> spec, in slot order).

    ``template`` names the input every slot copies, declared by ``annotation`` and
    ``field`` (an ``Input(...)``; ``optional=True`` makes every slot optional). Slots are
    ``prefix`` + 0 .. ``max - 1``, or ``names`` (then ``max`` is their count); the first
    ``min`` are required and ComfyUI's front end shows them (and one more) at first.
    A primitive template becomes a socket (``forceInput``), as in ComfyUI. ``optional``
    lists the group in the schema's ``optional`` section (ComfyUI's
    ``Autogrow.Input(..., optional=True)``); which slots are required is as above.
    """
    return grow(group, template, lambda name: input_spec(name, annotation, field),
                prefix=prefix, names=names, min=min, max=max, optional=optional)


def grow(group: str, template: str, make: Callable[[str], InputSpec], *,
         prefix: str | None = None, names: Sequence[str] | None = None,
         min: int = 1, max: int = 10, optional: bool = False) -> dict[str, InputSpec]:
    """:func:`autogrow` for a template given as ``make(name)``, the spec of the
    template input under another name (how the ComfyUI pack adapter declares one)."""
    if (prefix is None) == (names is None):
        raise TypeError(f"Autogrow {group!r}: give either prefix or names")
    slots = tuple(f"{prefix}{k}" for k in range(max)) if names is None else tuple(names)
    if not 1 <= len(slots) <= MAX_SLOTS:
        raise TypeError(f"Autogrow {group!r}: 1 to {MAX_SLOTS} slots, got {len(slots)}")
    if not 0 <= min <= len(slots):
        raise TypeError(f"Autogrow {group!r}: min must be 0 to {len(slots)}, got {min}")
    if len(set(slots)) != len(slots) or not all(s and "." not in s for s in slots):
        raise TypeError(f"Autogrow {group!r}: slot names must be unique, non-empty, "
                        "without a '.'")
    first = make(f"{group}.{slots[0]}")
    if first.dynamic is not None or first.autogrow is not None:
        raise TypeError(f"Autogrow {group!r}: the template input cannot itself be dynamic")
    info = Autogrow(group=group, template=template, slots=slots, min=min, prefix=prefix,
                    optional_template=not first.required, optional=optional)
    force = first.force_input or first.type in WIDGET_TYPES
    return {info.slot_name(slot): replace(
        make(info.slot_name(slot)), autogrow=info,
        required=first.required and k < min, force_input=force)
        for k, slot in enumerate(slots)}
