"""ComfyUI's UI-format workflows (what its Save writes and its PNGs carry in the
``workflow`` chunk) converted to our document, driven by the node schemas.

UI format::

    {"nodes": [{"id", "type", "pos", "size", "title"?, "mode", "widgets_values",
                "inputs": [{"name", "type", "link", "widget"?: {"name"}}],
                "outputs": [{"name", "type", "links"}]}],
     "links": [[id, from_node, from_slot, to_node, to_slot, type]] | [{"id", "origin_id", ...}],
     "groups": [{"title", "bounding", "color"}], "extra": {"ds": {"scale", "offset"}}}

The node list stores widget values by position (``widgets_values``), so their
names come from the schema: the widget inputs (primitive or choice inputs that
are not ``forceInput``) in schema order. ComfyUI's front end adds a
``control_after_generate`` widget after a seed (and any input that asks for
one), whose value follows the seed's: ``"fixed"``, ``"increment"``,
``"decrement"``, ``"randomize"``, or ``true``/``false`` in older files; extra
trailing values (an upload button's) are ignored. Newer files may store
``widgets_values`` as an object by name, or add ``widgets_values_named`` (by name,
``control_after_generate`` among them), which then wins over the positions. A
DynamicCombo (``COMFY_DYNAMICCOMBO_V3``, e.g. Resize Image/Mask's ``resize_type``) is
followed by the widgets of the option it holds, named ``"resize_type.width"``, as
ComfyUI's front end draws and saves them: ``["scale dimensions", 512, 512, "center",
"area"]``.

Front-end-only nodes are resolved as ComfyUI's ``graphToPrompt`` does: a link is
followed through Reroutes to its source (the Reroutes stay in the layout, see
:mod:`engine.comfy_layout`), and notes (Note, MarkdownNote) go to the layout's ``notes``,
which the canvas shows and the executor never sees. A legacy PrimitiveNode becomes the
real primitive node of the widgets it feeds (``PrimitiveInt`` ...), linked into each,
with its control_after_generate: in ComfyUI its value and control drive every target
together, whatever the targets' own hidden controls say. A widget input linked from a
real node becomes a link. Muted (mode 2) and bypassed (mode 4) nodes are kept with
``"mode": "muted" | "bypass"``, which the validator resolves
(:func:`engine.workflow.resolve_modes`), so the canvas still shows them. A node of a type
the schemas lack keeps its ``widgets_values`` (and ``widgets_values_named``) raw in its
layout entry; :func:`engine.comfy_raw.restore_raw_widgets` names them once the type is known.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.workflow import (
    BYPASS,
    DOCUMENT_FORMAT,
    DOCUMENT_VERSION,
    MUTED,
    WorkflowFormatError,
    is_link,
)

if TYPE_CHECKING:
    from engine.comfy_layout import Dropped, Reroutes
    from engine.registry import NodeRegistry

NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
#: said when a file's subgraphs (or group nodes) are unpacked: a save from the canvas
#: writes the nodes flat
UNPACKED_SUBGRAPHS = ("its subgraphs were unpacked into their nodes: saved from here, the "
                      "workflow stays unpacked (ComfyUI's own file keeps them)")
REROUTE = "Reroute"
PRIMITIVE = "PrimitiveNode"
CONTROL_MODES = ("fixed", "increment", "decrement", "randomize")
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO",
                          # widgets only ComfyUI's front end draws (a crop box, a camera, a
                          # before/after slider): they hold a place in widgets_values too
                          "BOUNDING_BOX", "WEBCAM", "IMAGECOMPARE"})
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"  # as engine.node.DYNAMIC_COMBO
#: a schema's widgets the front end adds after its own: ``[[name, type], ...]`` (ours)
TRAILING_KEY = "trailing_widgets"
MAX_NESTING = 8  # DynamicCombos inside options, followed this deep
#: types ComfyUI's front end draws as a seed widget (an INT and its control), whatever
#: the input's name (ComfyUI_essentials' "INT:seed" inputs)
SEED_WIDGET_TYPES = frozenset({"INT:seed", "INT:noise_seed"})
# ComfyUI's front end gives these INT inputs a control widget even when the
# schema does not ask for one.
LEGACY_CONTROL_NAMES = frozenset({"seed", "noise_seed"})
_MAX_HOPS = 10_000  # Reroute chains followed before giving up (a loop)


@dataclass(frozen=True)
class Widget:
    name: str
    type: str
    control: bool
    # A DynamicCombo: each option's widgets ("name.sub"), drawn right after it.
    options: Mapping[str, tuple[Widget, ...]] | None = None
    multiline: bool = False  # a text box (a primitive feeding it is String (Multiline))

    def following(self, value: Any) -> tuple[Widget, ...]:
        """The widgets the chosen ``value`` brings after this one (none for a plain one)."""
        if self.options is None or not isinstance(value, str):
            return ()
        return self.options.get(value, ())


@dataclass(frozen=True)
class NodeDef:
    """What conversion needs of one node type's schema."""

    display_name: str
    widgets: tuple[Widget, ...]
    #: widgets the front end adds after the schema's own (``trailing_widgets``: Custom
    #: Combo's hidden ``index`` and option boxes); a value that does not fit one's type
    #: passes it by (files saved before the front end added that widget)
    trailing: tuple[Widget, ...] = ()


@dataclass
class Conversion:
    """A converted workflow: our document and what could not be carried over."""

    document: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def prompt(self) -> dict[str, dict[str, Any]]:
        return self.document["prompt"]


class RegistrySchemas(Mapping[str, dict[str, Any]]):
    """A registry's node schemas (the ``/object_info`` entries), built on first use."""

    def __init__(self, registry: NodeRegistry):
        self.registry = registry
        self._cache: dict[str, dict[str, Any]] = {}

    def __getitem__(self, type_id: str) -> dict[str, Any]:
        if type_id not in self._cache:
            cls = self.registry.get(type_id)
            if cls is None:
                raise KeyError(type_id)
            self._cache[type_id] = cls.schema(None)  # choices are not needed here
        return self._cache[type_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.registry.classes)

    def __len__(self) -> int:
        return len(self.registry.classes)


def is_ui_workflow(obj: Any) -> bool:
    """ComfyUI's UI (litegraph) format, rather than an API prompt or our document."""
    return (isinstance(obj, dict) and isinstance(obj.get("nodes"), list)
            and isinstance(obj.get("links"), list | dict) and "format" not in obj)


def node_def(schema: Mapping[str, Any]) -> NodeDef:
    """The widget inputs of an ``/object_info`` entry, in the order ComfyUI draws them."""
    inputs = schema.get("input") if isinstance(schema.get("input"), dict) else {}
    order = schema.get("input_order") if isinstance(schema.get("input_order"), dict) else {}
    trailing = schema.get(TRAILING_KEY) if isinstance(schema.get(TRAILING_KEY), list) else []
    return NodeDef(str(schema.get("display_name") or schema.get("name") or ""),
                   _widgets(inputs, order),
                   tuple(Widget(str(t[0]), str(t[1]), False) for t in trailing
                         if isinstance(t, list | tuple) and len(t) == 2))


def schema_inputs(inputs: Any, order: Any) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(name, kind, options)`` of a schema's ``{"required": ..., "optional": ...}``
    inputs, required then optional, each in ``order`` (``input_order``) where it says;
    ``kind`` is ``"COMBO"`` for a choice list. Malformed entries are skipped."""
    inputs = inputs if isinstance(inputs, Mapping) else {}
    order = order if isinstance(order, Mapping) else {}
    for section in ("required", "optional"):
        specs = inputs.get(section) if isinstance(inputs.get(section), Mapping) else {}
        names = order.get(section) if isinstance(order.get(section), list) else list(specs)
        for name in names:
            spec = specs.get(name)
            if not isinstance(spec, list | tuple) or not spec or not isinstance(name, str):
                continue
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            yield name, "COMBO" if isinstance(spec[0], list | tuple) else str(spec[0]), options


def _widgets(inputs: Mapping[str, Any], order: Mapping[str, Any], prefix: str = "",
             depth: int = 0) -> tuple[Widget, ...]:
    """The widgets of ``{"required": {...}, "optional": {...}}``; a DynamicCombo's
    options' own (``prefix`` their names: ``"resize_type."``) as ComfyUI's front end
    inserts them after it, required then optional, in schema order."""
    widgets: list[Widget] = []
    for name, kind, options in schema_inputs(inputs, order):
        full = prefix + name
        if kind == DYNAMIC_COMBO and depth < MAX_NESTING:
            choices = options.get("options") if isinstance(options.get("options"),
                                                           list) else []
            widgets.append(Widget(full, "COMBO", False, {
                str(o["key"]): _widgets(o["inputs"], {}, full + ".", depth + 1)
                for o in choices if isinstance(o, dict) and "key" in o
                and isinstance(o.get("inputs"), dict)}))
            continue
        if kind in SEED_WIDGET_TYPES and not options.get("forceInput"):
            widgets.append(Widget(full, "INT", True))  # a seed widget and its control
            continue
        if kind not in WIDGET_TYPES or options.get("forceInput"):
            continue
        control = options.get("control_after_generate")
        if control is None:
            control = kind == "INT" and name in LEGACY_CONTROL_NAMES
        widgets.append(Widget(full, kind, bool(control),
                              multiline=bool(options.get("multiline"))))
    return tuple(widgets)


def map_widget_values(values: Any, node: NodeDef) -> tuple[dict[str, Any], dict[str, str]]:
    """``widgets_values`` → (input values by name, control_after_generate modes).

    A DynamicCombo's value is followed by the widgets of the option it names, so the
    positions after it depend on it (``["scale by multiplier", 1.5, "area"]``); by name
    they are ``"resize_type.multiplier"``."""
    if isinstance(values, dict):
        widgets = [*_expanded(node.widgets, values.get), *node.trailing]
        controls = [w.name for w in widgets if w.control]
        mode = values.get("control_after_generate")
        return ({w.name: values[w.name] for w in widgets if w.name in values},
                {controls[0]: control_mode(mode)} if len(controls) == 1
                and (mode in CONTROL_MODES or isinstance(mode, bool)) else {})
    if not isinstance(values, list):
        return {}, {}
    # With a value for every control widget, consume them by position whatever they
    # hold; otherwise only a value that is one (some files omit them).
    out, control, seen = _by_position(values, node.widgets, every_control=True)
    used = len(seen) + sum(w.control for w in seen)
    if len(values) < used:
        out, control, _ = _by_position(values, node.widgets, every_control=False)
    elif node.trailing:
        out.update(_trailing(values[used:], node.trailing))
    return out, control


def _trailing(values: list[Any], widgets: tuple[Widget, ...]) -> dict[str, Any]:
    """The values after a node's schema widgets, onto the widgets its front end adds
    (skipping one whose type the value does not fit)."""
    out: dict[str, Any] = {}
    queue = list(widgets)
    for value in values:
        k = next((k for k, w in enumerate(queue) if _fits(value, w.type)), None)
        if k is not None:  # a value that fits none (a null index) is passed over
            out[queue[k].name] = value
            del queue[:k + 1]
    return out


def _fits(value: Any, kind: str) -> bool:
    if kind == "INT":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "STRING":
        return isinstance(value, str)
    return True


def _expanded(widgets: tuple[Widget, ...], value_of: Any) -> list[Widget]:
    """``widgets`` with each DynamicCombo followed by its chosen option's widgets (by a
    value left out: every option's, each name once)."""
    out: list[Widget] = []
    for widget in widgets:
        out.append(widget)
        value = value_of(widget.name)
        if value is None and widget.options:
            brought = {w.name: w for ws in widget.options.values() for w in ws}
            out.extend(_expanded(tuple(brought.values()), value_of))
        else:
            out.extend(_expanded(widget.following(value), value_of))
    return out


def _drop_unchosen(inputs: dict[str, Any], widgets: tuple[Widget, ...]) -> None:
    """Leave out the widgets of DynamicCombo options other than the chosen one (where
    positions and names disagreed on the choice, the names won)."""
    chosen = {w.name for w in _expanded(widgets, inputs.get)}
    for widget in widgets:
        for brought in (widget.options or {}).values():
            for w in brought:
                if w.name not in chosen:
                    inputs.pop(w.name, None)


def _by_position(values: list[Any], widgets: tuple[Widget, ...], every_control: bool
                 ) -> tuple[dict[str, Any], dict[str, str], list[Widget]]:
    """Values, control modes, and the widgets the values met (then those left)."""
    out: dict[str, Any] = {}
    control: dict[str, str] = {}
    queue = list(widgets)
    seen: list[Widget] = []
    i = 0
    while queue and i < len(values):
        widget = queue.pop(0)
        seen.append(widget)
        out[widget.name] = values[i]
        queue[:0] = widget.following(values[i])
        i += 1
        if not widget.control or i >= len(values):
            continue
        value = values[i]
        if every_control or value in CONTROL_MODES or (
                isinstance(value, bool) and len(values) - i > len(queue)):
            control[widget.name] = control_mode(value)
            i += 1
    return out, control, seen + queue


def control_mode(value: Any) -> str:
    """A saved control_after_generate value (ComfyUI's strings, or old files' booleans)
    as one of :data:`CONTROL_MODES`."""
    if isinstance(value, str) and value in CONTROL_MODES:
        return value
    return "randomize" if value is True else "fixed"  # old files: a "random seed" toggle


@dataclass(frozen=True)
class Link:
    id: str
    origin: str
    origin_slot: int
    target: str
    target_slot: int


def parse_links(raw: Any) -> dict[str, Link]:
    items = raw.values() if isinstance(raw, dict) else raw
    links: dict[str, Link] = {}
    for item in items:
        try:
            if isinstance(item, list | tuple) and len(item) >= 5:
                link = Link(str(item[0]), str(item[1]), int(item[2]), str(item[3]),
                             int(item[4]))
            elif isinstance(item, dict) and item.get("id") is not None:
                link = Link(str(item["id"]), str(item.get("origin_id")),
                             int(item.get("origin_slot", 0)), str(item.get("target_id")),
                             int(item.get("target_slot", 0)))
            else:
                continue
        except (TypeError, ValueError):
            continue
        links[link.id] = link
    return links


def vec2(value: Any) -> list[float] | None:
    if isinstance(value, dict):
        value = [value.get("0"), value.get("1")]
    if (isinstance(value, list | tuple) and len(value) >= 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value[:2])):
        return [value[0], value[1]]
    return None


def convert_ui_workflow(obj: Any, schemas: Mapping[str, Mapping[str, Any]]) -> Conversion:
    """Convert a UI-format workflow to our document, using ``schemas`` (type id →
    ``/object_info`` entry, e.g. :class:`RegistrySchemas`) to name widget values."""
    if not is_ui_workflow(obj):
        raise WorkflowFormatError("not a ComfyUI UI-format workflow (no 'nodes' list and "
                                  "'links')")
    warnings: list[str] = []
    overrides: dict[str, dict[str, Any]] = {}
    from engine.comfy_layout import (  # they build on this module
        Dropped,
        Reroutes,
        looks,
        native_reroutes,
        note_extras,
    )
    from engine.comfy_raw import keep_raw, raw_warning
    from engine.comfy_subgraphs import flatten, has_instances

    flattened = has_instances(obj)
    if flattened:
        flat = flatten(obj, schemas)
        obj, overrides = flat.workflow, flat.overrides
        warnings.extend(flat.warnings)
        warnings.append(UNPACKED_SUBGRAPHS)
    ui_nodes: dict[str, dict[str, Any]] = {}
    for n in obj["nodes"]:
        if (isinstance(n, dict) and isinstance(n.get("id"), int | str)
                and not isinstance(n.get("id"), bool) and isinstance(n.get("type"), str)):
            ui_nodes[str(n["id"])] = n
    links = parse_links(obj["links"])
    reroutes = Reroutes(obj, ui_nodes, links, with_links=not flattened)
    if flattened and native_reroutes(obj)[0]:
        warnings.append("the reroute points on links were left out: their links are "
                        "renumbered when subgraphs are unpacked (the links still hold)")
    dropped = Dropped()
    prompt: dict[str, dict[str, Any]] = {}
    layout: dict[str, dict[str, Any]] = {}
    defs: dict[str, NodeDef | None] = {}
    unknown: dict[str, list[str]] = {}
    raw: list[str] = []  # unknown nodes kept with their raw widget values
    notes: dict[str, dict[str, Any]] = {}
    for nid, n in ui_nodes.items():
        kind = n["type"]
        if kind in NOTE_TYPES:
            notes[nid] = _note(nid, n, looks(nid, n, dropped), dropped)
            continue
        if kind in (REROUTE, PRIMITIVE):
            continue
        if kind.startswith(("workflow>", "workflow/")):
            warnings.append(f"node {nid} is a group node ({kind}) whose definition the file "
                            "does not hold (extra.groupNodes); it was left out")
            continue
        nd = cached_node_def(kind, schemas, defs)
        inputs: dict[str, Any] = {}
        control: dict[str, str] = {}
        if nd is None:
            unknown.setdefault(kind, []).append(nid)
        else:
            inputs, control = widget_inputs(n.get("widgets_values"),
                                            n.get("widgets_values_named"), nd)
            inputs.update(overrides.get(nid, {}))  # a subgraph's promoted widgets
        entry: dict[str, Any] = {"class_type": kind, "inputs": inputs}
        title = n.get("title")
        if isinstance(title, str) and title and title != (nd.display_name if nd else kind):
            entry["_meta"] = {"title": title}
        if n.get("mode") in (2, 4) and not isinstance(n.get("mode"), bool):
            entry["mode"] = MUTED if n["mode"] == 2 else BYPASS
        prompt[nid] = entry
        place = layout_place(n, title if "_meta" in entry else None)
        if control:
            place["control"] = control
        if nd is None and keep_raw(n, place):
            raw.append(nid)
        layout[nid] = {**place, **looks(nid, n, dropped)}
        note_extras(nid, n, dropped)
    for kind, ids in unknown.items():
        warnings.append(f"node type {kind} is not available here (node {', '.join(ids)})")
    if raw:
        warnings.append(raw_warning(raw, ui_nodes))

    feeds: dict[str, list[tuple[str, str]]] = {}
    passes: list[tuple[str, str, str]] = []  # (node, input, nearest reroute)
    for nid, entry in prompt.items():
        _connect(nid, entry, ui_nodes, links, prompt, warnings, feeds, passes, reroutes)
    from engine.comfy_primitives import LegacyPrimitive

    for pid, targets in feeds.items():
        LegacyPrimitive(pid, ui_nodes[pid], targets, schemas, defs, prompt, layout,
                   warnings).apply(looks(pid, ui_nodes[pid], dropped))
    idle = [nid for nid, n in ui_nodes.items() if n["type"] == PRIMITIVE and nid not in feeds]
    if idle:  # ComfyUI shows them with no widget; they hold no value to keep
        warnings.append(f"node {idle[0]} (Primitive) is linked to no widget, so it was left "
                        "out" if len(idle) == 1 else f"nodes {', '.join(idle)} (Primitives) "
                        "are linked to no widget, so they were left out")
    for nid, name, rid in passes:
        value = prompt[nid]["inputs"].get(name)
        if value is None or is_link(value):  # not where a primitive's value was written
            layout[nid].setdefault("via", {})[name] = rid
    warnings.extend(dropped.warnings())

    document: dict[str, Any] = {
        "format": DOCUMENT_FORMAT, "version": DOCUMENT_VERSION, "prompt": prompt,
        "layout": {"nodes": layout, "groups": _groups(obj.get("groups"))}, "extra": {},
    }
    rerouted = reroutes.layout(prompt)
    if rerouted:
        document["layout"]["reroutes"] = rerouted
    if notes:
        document["layout"]["notes"] = notes
    viewport = _viewport(obj.get("extra"))
    if viewport:
        document["layout"]["viewport"] = viewport
    return Conversion(document, warnings)


def widget_inputs(values: Any, named: Any, nd: NodeDef) -> tuple[dict[str, Any], dict[str, str]]:
    """A node's ``widgets_values`` (and ``widgets_values_named``, which wins) as input
    values and control_after_generate modes by name."""
    inputs, control = map_widget_values(values, nd)
    if isinstance(named, dict):  # newer front ends also save values by name
        by_name, modes = map_widget_values(named, nd)
        inputs.update(by_name)
        control.update(modes)
        _drop_unchosen(inputs, nd.widgets)
    return inputs, control


def cached_node_def(kind: str, schemas: Mapping[str, Mapping[str, Any]],
                    defs: dict[str, NodeDef | None]) -> NodeDef | None:
    """``kind``'s widgets from ``schemas``, made once per conversion (``defs``); None for
    a type the schemas lack."""
    if kind not in defs:
        schema = schemas.get(kind)
        defs[kind] = node_def(schema) if isinstance(schema, Mapping) else None
    return defs[kind]


def layout_place(n: Mapping[str, Any], title: str | None) -> dict[str, Any]:
    """A UI node's position, size and ``title`` as our layout entry."""
    place: dict[str, Any] = {"pos": vec2(n.get("pos")) or [0, 0]}
    size = vec2(n.get("size"))
    if size:
        place["size"] = size
    if title:
        place["title"] = title
    return place


def short_json(value: Any, most: int = 80) -> str:
    """``value`` as JSON for a warning, cut at ``most`` characters."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= most else text[:most - 1] + "…"


def _connect(nid: str, entry: dict[str, Any], ui_nodes: dict[str, dict[str, Any]],
             links: dict[str, Link], prompt: dict[str, Any], warnings: list[str],
             feeds: dict[str, list[tuple[str, str]]], passes: list[tuple[str, str, str]],
             reroutes: Reroutes) -> None:
    """Fill a node's linked inputs from its input slots (ComfyUI reads the slots' link
    ids, not the link table, so a stale table entry does not count). An input fed by a
    PrimitiveNode goes to ``feeds`` (primitive → its targets); one that passes a
    reroute to ``passes``."""
    slots = ui_nodes[nid].get("inputs")
    for index, slot in enumerate(slots if isinstance(slots, list) else []):
        if not isinstance(slot, dict) or slot.get("link") is None:
            continue
        widget = slot.get("widget") if isinstance(slot.get("widget"), dict) else {}
        name = widget.get("name") or slot.get("name")
        link = links.get(str(slot["link"]))
        if not isinstance(name, str) or not name:
            warnings.append(f"node {nid}: input slot {index} has no name; its link dropped")
            continue
        if link is None:
            warnings.append(f"node {nid}: input '{name}' names link {slot['link']}, which "
                            "the workflow does not have; dropped")
            continue
        if link.origin not in ui_nodes:
            warnings.append(f"node {nid}: input '{name}' is linked from node {link.origin}, "
                            "which the workflow does not have; dropped")
            continue
        near = reroutes.via(link)
        if near is not None:
            passes.append((nid, name, near))
        source = _source(link, ui_nodes, links)
        if source is None:
            continue  # a Reroute with nothing upstream: ComfyUI leaves the input empty
        src_id, src_slot = source
        if ui_nodes[src_id]["type"] == PRIMITIVE:
            feeds.setdefault(src_id, []).append((nid, name))
            continue
        if src_id in prompt:
            entry["inputs"][name] = [src_id, src_slot]


def _source(link: Link, ui_nodes: dict[str, dict[str, Any]],
            links: dict[str, Link]) -> tuple[str, int] | None:
    """The real origin of a link, followed upstream through Reroutes."""
    current: Link | None = link
    for _ in range(_MAX_HOPS):
        if current is None:
            return None
        origin = ui_nodes.get(current.origin)
        if origin is None:
            return None
        if origin["type"] != REROUTE:
            return current.origin, current.origin_slot
        slots = origin.get("inputs")
        upstream = slots[0].get("link") if isinstance(slots, list) and slots \
            and isinstance(slots[0], dict) else None
        current = links.get(str(upstream)) if upstream is not None else None
    return None


def _note(nid: str, n: dict[str, Any], seen: dict[str, Any], dropped: Dropped
          ) -> dict[str, Any]:
    """A Note or MarkdownNote as the canvas keeps it: its text, place and colour (``seen``:
    its looks, of which a note keeps only the colour)."""
    values = n.get("widgets_values")
    text = values[0] if isinstance(values, list) and values and isinstance(values[0], str) else ""
    note: dict[str, Any] = {"pos": vec2(n.get("pos")) or [0, 0], "text": text}
    if n.get("type") == "MarkdownNote":
        note["markdown"] = True
    size = vec2(n.get("size"))
    if size:
        note["size"] = size
    title = n.get("title")
    if isinstance(title, str) and title and title not in NOTE_TYPES:
        note["title"] = title
    if "color" in seen:
        note["color"] = seen["color"]
    for flag in ("collapsed", "pinned"):
        if seen.get(flag):
            dropped.add(f"{flag} on a note", nid)
    return note


def _groups(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        return []
    keep = ("title", "bounding", "color", "font_size")
    return [{k: g[k] for k in keep if k in g} for g in raw if isinstance(g, dict)]


def _viewport(extra: Any) -> dict[str, float] | None:
    ds = extra.get("ds") if isinstance(extra, dict) else None
    if not isinstance(ds, dict):
        return None
    offset, scale = vec2(ds.get("offset")), ds.get("scale")
    if offset is None or not isinstance(scale, int | float) or isinstance(scale, bool) \
            or scale <= 0:
        return None
    # litegraph draws at (pos + offset) * scale; React Flow at pos * zoom + (x, y)
    return {"x": offset[0] * scale, "y": offset[1] * scale, "zoom": scale}
