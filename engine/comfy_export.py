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

from collections.abc import Mapping, Sequence
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
# What a node takes in ComfyUI's front end (litegraph's measures), for a node whose layout
# has no size: the PNG of a CLI run or a plain API prompt (the front end grows a node that
# is too small, so an estimate errs on the large side).
TITLE_HEIGHT = 30.0  # drawn above the node's pos
SLOT_HEIGHT = 20.0  # a row of input and output sockets
WIDGET_HEIGHT = 24.0  # a widget's row with its margin
TEXTBOX_HEIGHT = 130.0  # a multiline text widget (CLIP Text Encode's prompt)
UPLOAD_HEIGHT = 240.0  # an upload input's button and the picture shown below (Load Image)
#: the space left between columns and between the nodes of one column
GAP_X, GAP_Y = 50.0, 30.0
#: the most outputs a node of the view gets (a link to a higher slot is left out)
MAX_SLOTS = 256


def ui_view(document: dict[str, Any], schemas: Mapping[str, Any]) -> dict[str, Any]:
    """A ComfyUI UI-format view of our ``document`` (see the module)."""
    prompt = document.get("prompt") if isinstance(document.get("prompt"), dict) else {}
    layout = document.get("layout") if isinstance(document.get("layout"), dict) else {}
    places = layout.get("nodes") if isinstance(layout.get("nodes"), dict) else {}
    nodes: dict[str, dict[str, Any]] = {}
    wanted: list[tuple[str, str, Any]] = []  # (target node, input name, link)
    estimated = False  # a node's size was estimated: the layout knew none
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
            "size": vec2(place.get("size")),
            "flags": {}, "order": order,
            "mode": _MODES.get(mode, 0) if isinstance(mode := entry.get("mode"), str | int)
            else 0,
            "inputs": [], "outputs": _outputs(schema),
            "properties": {"Node name for S&R": kind},
            "widgets_values": [],
        }
        meta = entry.get("_meta") if isinstance(entry.get("_meta"), dict) else {}
        title = place.get("title") or meta.get("title")
        # a title that is the type's display name is none: ComfyUI shows its own name then
        if isinstance(title, str) and title and not (
                schema is not None and title == node_def(schema).display_name):
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
        if node["size"] is None:
            textboxes = _textboxes(node_def(schema).widgets, {**_defaults(schema), **inputs}) \
                if schema is not None else 0
            shown = node_def(schema) if schema is not None else None
            node["size"] = estimate_size(
                node, textboxes, _uploads(schema),
                widget_names=[w.name for w in shown.widgets] if shown else (),
                display_name=shown.display_name if shown else "")
            estimated = True
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
    groups = [dict(g) for g in layout.get("groups") or [] if isinstance(g, dict)] \
        if isinstance(layout.get("groups"), list) else []
    if estimated:
        spread(list(nodes.values()), [*reroutes.values(), *groups])
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
    notes = _notes(layout, {n["id"] for n in (*nodes.values(), *reroutes.values())})
    numeric = [n["id"] for n in (*nodes.values(), *reroutes.values(), *notes)
               if isinstance(n["id"], int)]
    return {
        "last_node_id": max(numeric, default=0), "last_link_id": len(links),
        "nodes": [*nodes.values(), *reroutes.values(), *notes], "links": links,
        "groups": groups,
        "config": {}, "extra": _extra(layout), "version": 0.4,
    }


def _notes(layout: Mapping[str, Any], taken: set[Any]) -> list[dict[str, Any]]:
    """ComfyUI's Note (or MarkdownNote) nodes for the layout's notes: text, place, size,
    title and colour, as :func:`engine.comfy_workflow._note` reads them back. A note keeps
    its id unless a node has it."""
    entries = layout.get("notes") if isinstance(layout.get("notes"), dict) else {}
    out: list[dict[str, Any]] = []
    used = set(taken)
    for nid, entry in entries.items():
        if not isinstance(entry, dict):
            continue
        ui_id = _ui_id(str(nid))
        if ui_id in used:
            ui_id = max([i for i in used if isinstance(i, int)], default=0) + 1
        used.add(ui_id)
        text = entry.get("text") if isinstance(entry.get("text"), str) else ""
        note: dict[str, Any] = {
            "id": ui_id, "type": "MarkdownNote" if entry.get("markdown") is True else "Note",
            "pos": vec2(entry.get("pos")) or [0.0, 0.0],
            "size": vec2(entry.get("size")) or [400.0, 200.0], "flags": {},
            "order": 0, "mode": 0, "inputs": [], "outputs": [], "properties": {},
            "widgets_values": [text],
        }
        if isinstance(entry.get("title"), str) and entry["title"]:
            note["title"] = entry["title"]
        _looks(note, entry)
        out.append(note)
    return out


def _extra(layout: Mapping[str, Any]) -> dict[str, Any]:
    """The view (``extra.ds``), the inverse of :func:`engine.comfy_workflow._viewport`."""
    view = layout.get("viewport")
    if not isinstance(view, dict):
        return {}
    x, y, zoom = view.get("x"), view.get("y"), view.get("zoom")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (x, y, zoom)) \
            or zoom <= 0:
        return {}
    return {"ds": {"offset": [x / zoom, y / zoom], "scale": zoom}}


def estimate_size(node: Mapping[str, Any], textboxes: int = 0, uploads: int = 0, *,
                  widget_names: Sequence[str] = (), display_name: str = "") -> list[float]:
    """``[width, height]`` of a UI-format node in ComfyUI's front end, from its sockets,
    widgets (``widgets_values``: a seed's control is a row of its own; ``textboxes`` of
    them multiline; ``uploads`` of them with an upload button and the picture below it)
    and title, as litegraph measures them: a row per socket pair, a widget's row below
    them (KSampler: 315 x 262; Load Checkpoint: 315 x 98; Load Image: 315 x 314). The
    width fits the title (``display_name`` where the node has none) and the longest
    widget label (``widget_names``) with room for its value."""
    sockets = [s for s in node.get("inputs") or () if not s.get("widget")]
    outputs = list(node.get("outputs") or ())
    values = node.get("widgets_values")
    widgets = len(values) if isinstance(values, list) else 0
    rows = max(len(sockets), len(outputs))
    height = rows * SLOT_HEIGHT + (widgets - textboxes) * WIDGET_HEIGHT \
        + textboxes * TEXTBOX_HEIGHT + uploads * UPLOAD_HEIGHT + (14.0 if widgets else 6.0)
    title = str(node.get("title") or display_name or node.get("type") or "")
    label = max((len(name) for name in widget_names), default=0)
    inner = max((len(str(a.get("name") or "")) + len(str(b.get("name") or ""))
                 for a, b in zip(sockets, outputs, strict=False)), default=0)
    labels = max((len(str(x.get("name") or "")) for x in (*sockets, *outputs)), default=0)
    width = max(400.0 if textboxes else 315.0 if widgets else 225.0,
                8.0 * len(title) + 60.0, 7.0 * max(inner, labels) + 80.0,
                8.0 * label + 200.0 if label else 0.0)
    return [width, max(height, SLOT_HEIGHT + 6.0)]


def spread(nodes: list[dict[str, Any]], others: list[dict[str, Any]]) -> None:
    """Move ``nodes`` apart so that no two boxes (title bar included) overlap, keeping
    the layout's columns (nodes at one x) in order and each column's nodes in order:
    a column starts :data:`GAP_X` right of the widest node of the one before it, a node
    :data:`GAP_Y` below the node above it. Of ``others``, a reroute (``pos``) moves with
    the column it stands in; a group (``bounding``) with the column it starts in, grown
    to hold the nodes that stood in it."""
    groups = [g for g in others if _rect(g.get("bounding"))]
    members = {id(g): [n for n in nodes if _inside(n["pos"], _rect(g.get("bounding")))]
               for g in groups}
    by_x: dict[float, list[dict[str, Any]]] = {}
    for node in nodes:
        by_x.setdefault(float(node["pos"][0]), []).append(node)
    shifts: list[tuple[float, float]] = []  # (a column's x before, how far it moved)
    shift, right = 0.0, None
    for x in sorted(by_x):
        column = sorted(by_x[x], key=lambda n: float(n["pos"][1]))
        if right is not None:
            shift = max(shift, right + GAP_X - x)
        shifts.append((x, shift))
        right = x + shift + max(float(n["size"][0]) for n in column)
        down, bottom = 0.0, None
        for node in column:
            y = float(node["pos"][1])
            if bottom is not None:
                down = max(down, bottom + GAP_Y + TITLE_HEIGHT - y)
            node["pos"] = [x + shift, y + down]
            bottom = y + down + float(node["size"][1])

    def moved(x: float) -> float:
        before = [s for col, s in shifts if col <= x]
        return before[-1] if before else 0.0

    for other in others:
        rect = _rect(other.get("bounding"))
        if rect is not None:
            x, y, w, h = rect
            x0, y0, x1, y1 = x + moved(x), y, x + moved(x) + w, y + h
            for node in members[id(other)]:  # room for its title bar and the group's
                x0, y0 = min(x0, node["pos"][0] - 10), min(y0, node["pos"][1] - 80)
                x1 = max(x1, node["pos"][0] + node["size"][0] + 10)
                y1 = max(y1, node["pos"][1] + node["size"][1] + 10)
            other["bounding"] = [x0, y0, x1 - x0, y1 - y0]
        elif vec2(other.get("pos")) is not None:
            x, y = vec2(other["pos"]) or [0.0, 0.0]
            other["pos"] = [x + moved(x), y]


def _rect(value: Any) -> tuple[float, float, float, float] | None:
    if isinstance(value, list) and len(value) >= 4 and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value[:4]):
        return float(value[0]), float(value[1]), float(value[2]), float(value[3])
    return None


def _inside(pos: list[float], rect: tuple[float, float, float, float] | None) -> bool:
    return rect is not None and rect[0] <= pos[0] <= rect[0] + rect[2] \
        and rect[1] <= pos[1] <= rect[1] + rect[3]


def _uploads(schema: Mapping[str, Any] | None) -> int:
    """How many of a schema's inputs have an upload button (``upload``, or ComfyUI's
    ``image_upload`` and the like), each with its picture below in ComfyUI's app."""
    if schema is None:
        return 0
    return sum(1 for _, _, options in schema_inputs(schema.get("input"),
                                                    schema.get("input_order"))
               if options.get("upload") or any(k.endswith("_upload") and v
                                                for k, v in options.items()))


def _textboxes(widgets: tuple[Widget, ...], inputs: dict[str, Any]) -> int:
    """How many of the drawn widgets (a DynamicCombo's chosen ones too) are text boxes."""
    return sum(int(w.multiline) + _textboxes(w.following(inputs.get(w.name)), inputs)
               for w in widgets)


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
