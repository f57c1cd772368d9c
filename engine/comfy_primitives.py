"""A ComfyUI UI workflow's legacy PrimitiveNode, converted (:mod:`engine.comfy_workflow`).

In ComfyUI a PrimitiveNode's value and its control_after_generate drive every widget it
feeds together, and the widgets' own hidden controls do nothing; here it becomes the real
primitive node of the widgets' type, linked into each.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from engine.comfy_workflow import (
    CONTROL_MODES,
    MAX_NESTING,
    NodeDef,
    Widget,
    cached_node_def,
    control_mode,
    layout_place,
    short_json,
)

#: ComfyUI's primitive nodes by the widget type they feed (the first one the server has)
PRIMITIVE_NODES: Mapping[str, tuple[str, ...]] = {
    "INT": ("PrimitiveInt",), "FLOAT": ("PrimitiveFloat",), "BOOLEAN": ("PrimitiveBoolean",),
    "STRING": ("PrimitiveString", "PrimitiveStringMultiline")}
PRIMITIVE_TITLE = "Primitive"  # a PrimitiveNode's title until the user names it


class LegacyPrimitive:
    """A legacy PrimitiveNode and the widgets it feeds (``targets``: (node, input)).

    In ComfyUI its value and its control_after_generate drive every target together,
    and the targets' own (hidden) controls do nothing. So it becomes the primitive node
    of the targets' widget type (Int, Float, String, Boolean) in its place, linked into
    each, with its control; the widgets' stale controls go. Where there is none to hold
    the value (a choice, a seed beyond Int's range, targets of different types), the
    value is written into each target and its control set to the primitive's."""

    def __init__(self, pid: str, node: Mapping[str, Any], targets: list[tuple[str, str]],
                 schemas: Mapping[str, Mapping[str, Any]], defs: dict[str, NodeDef | None],
                 prompt: dict[str, dict[str, Any]], layout: dict[str, dict[str, Any]],
                 warnings: list[str]):
        self.pid, self.node, self.targets = pid, node, targets
        self.schemas, self.prompt, self.layout, self.warnings = schemas, prompt, layout, warnings
        values = node.get("widgets_values")
        values = values if isinstance(values, list) else []
        self.value = values[0] if values else None
        mode = values[1] if len(values) > 1 else None
        self.mode = control_mode(mode) if mode in CONTROL_MODES or isinstance(mode, bool) \
            else None
        # each target's widget, where its node's type is known
        self.widgets: dict[tuple[str, str], Widget | None] = {}
        for nid, name in targets:
            nd = cached_node_def(prompt[nid]["class_type"], schemas, defs)
            self.widgets[nid, name] = _widget_named(nd.widgets + nd.trailing, name) \
                if nd else None

    def apply(self, looks: dict[str, Any]) -> None:
        if self.value is None:
            return  # nothing saved: the targets keep their own values
        if _promoted_value(self.pid):  # a subgraph instance's widget value, unpacked
            for nid, name in self.targets:
                self.prompt[nid]["inputs"][name] = self.value
            return
        kind, node_type = self._node_type()
        if node_type is None:
            self._write_into_targets(kind)
            return
        entry: dict[str, Any] = {"class_type": node_type, "inputs": {"value": self.value}}
        title = self.node.get("title")
        shown = self.schemas[node_type].get("display_name") or node_type
        if isinstance(title, str) and title not in ("", PRIMITIVE_TITLE, shown):
            entry["_meta"] = {"title": title}
        self.prompt[self.pid] = entry
        place = layout_place(self.node, (entry.get("_meta") or {}).get("title"))
        if kind in ("INT", "FLOAT"):  # as the canvas gives a primitive fed into a number
            place["control"] = {"value": self.mode or "fixed"}
        self.layout[self.pid] = {**place, **looks}
        for nid, name in self.targets:
            self.prompt[nid]["inputs"][name] = [self.pid, 0]
            control = self.layout[nid].get("control")
            if isinstance(control, dict):
                control.pop(name, None)
                if not control:
                    del self.layout[nid]["control"]

    def _node_type(self) -> tuple[str | None, str | None]:
        """The widget type the targets share and the primitive node that holds this value
        for it, if the server has one."""
        kinds = {w.type for w in self.widgets.values() if w is not None}
        if not kinds:  # only targets of unknown types: the type the file gives the output
            outputs = self.node.get("outputs")
            first = outputs[0] if isinstance(outputs, list) and outputs else None
            kinds = {first["type"]} if isinstance(first, dict) \
                and isinstance(first.get("type"), str) else set()
        if len(kinds) != 1:
            return None, None
        (kind,) = kinds
        if kind == "INT" and isinstance(self.value, str) and _EXACT_INT.fullmatch(self.value):
            # past 2^53 the canvas sends an INT as its decimal text, to keep every digit
            self.value = int(self.value)
        if kind not in PRIMITIVE_NODES or not _holds(self.value, kind):
            return kind, None
        candidates = list(PRIMITIVE_NODES[kind])
        if any(w is not None and w.multiline for w in self.widgets.values()):
            candidates.reverse()  # String (Multiline) first, as the widgets are text boxes
        for node_type in candidates:
            schema = self.schemas.get(node_type)
            if isinstance(schema, Mapping) and _within(self.value, schema):
                return kind, node_type
        return kind, None

    def _write_into_targets(self, kind: str | None) -> None:
        for nid, name in self.targets:
            self.prompt[nid]["inputs"][name] = self.value
            widget = self.widgets[(nid, name)]
            moves = self.mode not in (None, "fixed") and kind in ("INT", "FLOAT")
            if widget is not None and (widget.control or moves):
                self.layout[nid].setdefault("control", {})[name] = self.mode or "fixed"
        ids = ", ".join(dict.fromkeys(nid for nid, _ in self.targets))
        if self.mode not in (None, "fixed") and kind is None:
            self.warnings.append(
                f"node {self.pid} (Primitive) feeds inputs of different types (node {ids}): "
                f"its value {short_json(self.value)} was written into each, and its "
                f"'{self.mode}' does not carry over")
        elif self.mode not in (None, "fixed") and kind not in ("INT", "FLOAT"):
            self.warnings.append(
                f"node {self.pid} (Primitive) changes its value after each run "
                f"('{self.mode}'); Steerflow steps only numbers, so node {ids} keeps "
                f"{short_json(self.value)}")
        elif self.mode == "randomize" and len(self.targets) > 1:
            self.warnings.append(
                f"node {self.pid} (Primitive): no primitive node here holds "
                f"{short_json(self.value)}, so it was written into node {ids}, each "
                "randomized on its own after a run "
                "(in ComfyUI they share one value)")


def _widget_named(widgets: tuple[Widget, ...], name: str, depth: int = 0) -> Widget | None:
    """The widget called ``name``, among a DynamicCombo's options' too."""
    for widget in widgets:
        if widget.name == name:
            return widget
        for brought in (widget.options or {}).values() if depth < MAX_NESTING else ():
            found = _widget_named(brought, name, depth + 1)
            if found is not None:
                return found
    return None


def _promoted_value(pid: str) -> bool:
    """The PrimitiveNodes engine.comfy_subgraphs puts in for an instance's widget values
    (ids ``"<node>:<widget>=value"``; a file's ids hold no ``=``)."""
    return pid.endswith("=value")


_EXACT_INT = re.compile(r"-?\d{1,40}")


def _holds(value: Any, kind: str) -> bool:
    """Whether ``value`` is one of a ``kind`` widget's values."""
    if isinstance(value, bool):
        return kind == "BOOLEAN"
    return isinstance(value, {"INT": int, "FLOAT": int | float, "STRING": str}.get(kind, ()))


def _within(value: Any, schema: Mapping[str, Any]) -> bool:
    """Whether a primitive node's ``value`` input takes ``value`` (its min and max)."""
    inputs = schema.get("input") if isinstance(schema.get("input"), Mapping) else {}
    required = inputs.get("required") if isinstance(inputs.get("required"), Mapping) else {}
    spec = required.get("value")
    options = spec[1] if isinstance(spec, list | tuple) and len(spec) > 1 \
        and isinstance(spec[1], Mapping) else {}
    low, high = options.get("min"), options.get("max")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    return not ((isinstance(low, int | float) and value < low)
                or (isinstance(high, int | float) and value > high))
