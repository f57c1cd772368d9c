"""Our workflow document as ComfyUI's UI format (LiteGraph JSON), the inverse of
:mod:`engine.comfy_workflow`: what ComfyUI's front end opens from a PNG's ``workflow``
chunk, and what ComfyUI packs read as their ``EXTRA_PNGINFO`` workflow.

- ``nodes``: ``id`` (an int where the id is one), ``type``, ``title`` (when the
  layout or ``_meta`` sets one), ``pos`` / ``size`` (from the layout), ``mode`` (0, 2
  muted, 4 bypass), ``properties`` (``"Node name for S&R"``), ``widgets_values`` in
  the order ComfyUI's front end draws the widgets (from the node's ``/object_info``
  schema, as :mod:`engine.comfy_workflow` reads them; an input the prompt leaves out
  shows its default; a control_after_generate value after a seed; None for a widget
  that is linked), ``inputs`` (sockets, then linked widgets with ``widget: {name}``)
  and ``outputs`` with their link ids;
- ``links``: ``[id, from_node, from_slot, to_node, to_slot, type]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.comfy_workflow import (
    SEED_WIDGET_TYPES,
    WIDGET_TYPES,
    Widget,
    node_def,
    schema_inputs,
    vec2,
)
from engine.workflow import is_link

_MODES = {"muted": 2, "bypass": 4, 2: 2, 4: 4}
_DEFAULT_SIZE = [320.0, 120.0]
#: the most outputs a node of the view gets (a link to a higher slot is left out)
MAX_SLOTS = 256


def ui_view(document: dict[str, Any], schemas: Mapping[str, Any]) -> dict[str, Any]:
    """A ComfyUI UI-format view of our ``document`` (see the module)."""
    prompt = document.get("prompt") if isinstance(document.get("prompt"), dict) else {}
    layout = document.get("layout") if isinstance(document.get("layout"), dict) else {}
    places = layout.get("nodes") if isinstance(layout.get("nodes"), dict) else {}
    nodes: dict[str, dict[str, Any]] = {}
    wanted: list[tuple[str, str, Any]] = []  # (target node, input name, link)
    for order, (nid, entry) in enumerate(prompt.items()):
        if not isinstance(entry, dict) or not isinstance(entry.get("class_type"), str):
            continue
        kind = entry["class_type"]
        inputs = entry.get("inputs") if isinstance(entry.get("inputs"), dict) else {}
        place = places.get(nid) if isinstance(places.get(nid), dict) else {}
        schema = _schema(schemas, kind)
        node: dict[str, Any] = {
            "id": _ui_id(nid), "type": kind,
            "pos": vec2(place.get("pos")) or [0.0, 0.0],
            "size": vec2(place.get("size")) or list(_DEFAULT_SIZE),
            "flags": {}, "order": order,
            "mode": _MODES.get(mode, 0) if isinstance(mode := entry.get("mode"), str | int)
            else 0,
            "inputs": [], "outputs": _outputs(schema),
            "properties": {"Node name for S&R": kind},
            "widgets_values": [],
        }
        meta = entry.get("_meta") if isinstance(entry.get("_meta"), dict) else {}
        title = place.get("title") or meta.get("title")
        if isinstance(title, str) and title:
            node["title"] = title
        control = place.get("control") if isinstance(place.get("control"), dict) else {}
        if schema is not None:
            values = {**_defaults(schema), **inputs}
            node["widgets_values"] = _widget_values(node_def(schema).widgets, values, control)
        elif isinstance(place.get("widgets_values"), list):  # a missing type's, kept raw
            node["widgets_values"] = list(place["widgets_values"])
        _looks(node, place)
        linked = [name for name, value in inputs.items() if is_link(value)]
        for name, kind_of, widget in _slots(schema, linked):
            slot: dict[str, Any] = {"name": name, "type": kind_of, "link": None}
            if widget:
                slot["widget"] = {"name": name}
            node["inputs"].append(slot)
            if name in linked:
                wanted.append((nid, name, inputs[name]))
        nodes[nid] = node
    links: list[list[Any]] = []

    def connect(source: dict[str, Any], slot: int, target: dict[str, Any], index: int) -> None:
        outputs = source["outputs"]
        while len(outputs) <= slot:  # an output the schema does not list
            outputs.append({"name": "*", "type": "*", "links": [], "slot_index": len(outputs)})
        out = outputs[slot]
        link_id = len(links) + 1
        links.append([link_id, source["id"], slot, target["id"], index, out["type"]])
        target["inputs"][index]["link"] = link_id
        out["links"].append(link_id)

    reroutes = _reroutes(layout, nodes, connect)
    for target, name, link in wanted:
        via = (places.get(target) or {}).get("via")
        source = reroutes.get(str(via.get(name))) if isinstance(via, dict) else None
        slot = 0 if source is not None else link[1]
        source = source or nodes.get(str(link[0]))
        if source is None:
            continue
        slots = nodes[target]["inputs"]
        slot_index = next(i for i, s in enumerate(slots) if s["name"] == name)
        if not (isinstance(slot, int) and 0 <= slot < MAX_SLOTS):
            continue  # no node has such an output: left out of the view
        connect(source, slot, nodes[target], slot_index)
    numeric = [n["id"] for n in (*nodes.values(), *reroutes.values()) if isinstance(n["id"], int)]
    return {
        "last_node_id": max(numeric, default=0), "last_link_id": len(links),
        "nodes": [*nodes.values(), *reroutes.values()], "links": links,
        "groups": list(layout.get("groups") or []) if isinstance(layout.get("groups"),
                                                                 list) else [],
        "config": {}, "extra": {}, "version": 0.4,
    }


def _reroutes(layout: Mapping[str, Any], nodes: dict[str, dict[str, Any]],
              connect: Any) -> dict[str, dict[str, Any]]:
    """ComfyUI's Reroute nodes for the layout's reroutes (``{id: {pos, input}}``), each
    linked from its source (a node or another reroute, chains in any order) and carrying
    its type; the inputs they feed are linked from them (their ``via``)."""
    entries = layout.get("reroutes") if isinstance(layout.get("reroutes"), dict) else {}
    made: dict[str, dict[str, Any]] = {}
    for rid, entry in entries.items():
        if not isinstance(entry, dict) or str(rid) in nodes:
            continue
        made[str(rid)] = {
            "id": _ui_id(str(rid)), "type": "Reroute", "pos": vec2(entry.get("pos")) or [0.0, 0.0],
            "size": [75.0, 26.0], "flags": {}, "order": len(nodes) + len(made), "mode": 0,
            "inputs": [{"name": "", "type": "*", "link": None}],
            "outputs": [{"name": "", "type": "*", "links": [], "slot_index": 0}],
            "properties": {"showOutputTypes": False}}
    pending = {rid: entries[rid].get("input") for rid in made}
    while pending:  # a reroute after its source, so its type is known when it is linked
        ready = [rid for rid, src in pending.items()
                 if not (is_link(src) and str(src[0]) in pending)]
        if not ready:  # a loop of reroutes: left unlinked
            break
        for rid in ready:
            src = pending.pop(rid)
            source = (made.get(str(src[0])) or nodes.get(str(src[0]))) if is_link(src) else None
            if source is None or not (isinstance(src[1], int) and 0 <= src[1] < MAX_SLOTS):
                continue
            connect(source, src[1], made[rid], 0)
            kind = source["outputs"][src[1]]["type"]
            made[rid]["outputs"][0]["type"] = kind
    return made


def _ui_id(node_id: str) -> int | str:
    """A plain decimal id as the number ComfyUI uses; anything else as it is."""
    plain = node_id.isascii() and node_id.isdecimal() and len(node_id) <= 15
    return int(node_id) if plain else node_id


def _schema(schemas: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    try:
        schema = schemas.get(kind)
    except Exception:  # a registry schema that fails to build (a pack's INPUT_TYPES)
        return None
    return schema if isinstance(schema, Mapping) else None


def _widget_values(widgets: tuple[Widget, ...], inputs: dict[str, Any],
                   control: dict[str, Any]) -> list[Any]:
    """Values in the front end's widget order; a DynamicCombo's chosen option's
    widgets follow it; a control_after_generate value after a seed."""
    out: list[Any] = []
    for widget in widgets:
        value = inputs.get(widget.name)
        out.append(None if is_link(value) else value)
        if widget.control:
            mode = control.get(widget.name)
            out.append(mode if isinstance(mode, str) else "fixed")
        out.extend(_widget_values(widget.following(value), inputs, control))
    return out


def _defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The schema's widget defaults: an input the prompt leaves out shows its default
    in ComfyUI's front end (a combo its first choice)."""
    out: dict[str, Any] = {}
    sections = schema.get("input")
    for section in ("required", "optional"):
        specs = sections.get(section) if isinstance(sections, dict) else None
        for name, spec in (specs.items() if isinstance(specs, dict) else ()):
            if not isinstance(spec, list | tuple) or not spec:
                continue
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if "default" in options:
                out[str(name)] = options["default"]
            elif isinstance(spec[0], list | tuple) and spec[0]:
                out[str(name)] = spec[0][0]
    return out


def _slots(schema: Mapping[str, Any] | None, linked: list[str]
           ) -> list[tuple[str, str, bool]]:
    """``(name, type, is_widget)`` of a node's input slots: its sockets, then its linked
    widgets, then linked inputs the schema does not list."""
    sockets: list[tuple[str, str, bool]] = []
    widgets: list[tuple[str, str, bool]] = []
    seen: set[str] = set()
    if schema is not None:
        for name, kind, options in schema_inputs(schema.get("input"),
                                                 schema.get("input_order")):
            seen.add(name)
            if (kind in WIDGET_TYPES or kind in SEED_WIDGET_TYPES) \
                    and not options.get("forceInput"):
                if name in linked:
                    widgets.append((name, kind, True))
            else:
                sockets.append((name, kind, False))
    rest = [(name, "*", False) for name in linked if name not in seen]
    return sockets + widgets + rest


def _outputs(schema: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if schema is None:
        return []
    types = schema.get("output") if isinstance(schema.get("output"), list) else []
    names = schema.get("output_name") if isinstance(schema.get("output_name"), list) else []
    kinds = ["COMBO" if isinstance(t, list | tuple) else str(t) for t in types]
    return [{"name": str(names[i]) if i < len(names) else kind, "type": kind,
             "links": [], "slot_index": i} for i, kind in enumerate(kinds)]


def _looks(node: dict[str, Any], place: Mapping[str, Any]) -> None:
    """The layout's colour, collapsed and pinned flags as litegraph keeps them (the
    canvas's one colour is ComfyUI's ``bgcolor``; its title colour the palette's)."""
    from engine.comfy_layout import PALETTE

    color = place.get("color")
    if isinstance(color, str) and color.startswith("#"):
        node["bgcolor"] = color
        node["color"] = PALETTE.get(color.lower(), color)
    for flag in ("collapsed", "pinned"):
        if place.get(flag) is True:
            node["flags"][flag] = True
